import math

import pytest

from rstitch_core import Policy, RoutingParams, SamplingParams


@pytest.mark.parametrize("kwargs, quoted", [
    (dict(max_new_tokens=0), "0"), (dict(max_new_tokens=2.5), "2.5"), (dict(temperature=-1), "-1"),
    (dict(temperature=math.inf), "inf"), (dict(top_p=0), "0"), (dict(top_p=1.5), "1.5"),
    (dict(top_k=-3), "-3"), (dict(seed=-1), "-1"), (dict(stop=("",)), "''"),
])
def test_bad_sampling_values_are_quoted(kwargs, quoted):
    with pytest.raises(ValueError) as err:
        SamplingParams(**kwargs)
    assert next(iter(kwargs)) in str(err.value) and quoted in str(err.value)


@pytest.mark.parametrize("tau", [math.nan, -0.1, 1.01, math.inf])
def test_threshold_outside_unit_interval_is_rejected(tau):
    with pytest.raises(ValueError, match=r"threshold \(tau\) must be a number in \[0, 1\]"):
        RoutingParams(threshold=tau)


def test_unknown_policy_lists_accepted_values():
    with pytest.raises(ValueError, match="unknown policy 'fast'; accepted: rstitch, llm, slm, speculative"):
        RoutingParams(policy="fast")
    assert RoutingParams(policy="SPECULATIVE").policy is Policy.SPECULATIVE


def test_draft_tokens_range_and_stop_string_normalisation():
    with pytest.raises(ValueError, match="draft_tokens"):
        RoutingParams(draft_tokens=0)
    assert SamplingParams(stop="\n\n").stop == ("\n\n",)


def test_routing_spec_options_override_the_defaults_and_bad_options_are_named():
    from rstitch_core.config import Acceptance, parse_routing_spec

    routing = parse_routing_spec("verified:relaxed=0.3:k=6:tau=0.2", threshold=0.02, draft_tokens=4)
    assert (routing.policy, routing.acceptance, routing.relaxed_ratio) == (Policy.VERIFIED, Acceptance.RELAXED, 0.3)
    assert (routing.draft_tokens, routing.threshold) == (6, 0.2)
    plain = parse_routing_spec("speculative", threshold=0.05, draft_tokens=None)
    assert (plain.threshold, plain.draft_tokens, plain.cost_aware) == (0.05, None, True)
    with pytest.raises(ValueError, match="'verified:tau=x'.*got 'tau=x'"):
        parse_routing_spec("verified:tau=x")
    with pytest.raises(ValueError, match=r"threshold \(tau\)"):
        parse_routing_spec("verified:tau=2")


def test_a_config_error_names_its_field_and_survives_pickling():
    """Served, the error crosses processes (Ray pickles it) and keeps the field path gRPC and HTTP use."""
    import pickle

    from rstitch_core.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        SamplingParams(top_k=-1)
    err = pickle.loads(pickle.dumps(caught.value.under("sampling.")))
    assert type(err) is ConfigError and err.field == "sampling.top_k" and str(err).startswith("sampling.top_k must be")
