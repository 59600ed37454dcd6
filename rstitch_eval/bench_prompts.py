"""Prompts the benchmarks share (`rstitch bench`, benchmarks/): below the CLI, so scripts need not import it."""

# Short grade-school maths problems written for this benchmark (not from any evaluation set).
PROMPTS = [
    "A baker makes 24 muffins and sells them in boxes of 4. Each box costs $6. How much money does he make?",
    "Tom reads 15 pages a day. His book has 210 pages. After 8 days, how many pages are left?",
    "A train travels 60 km per hour for 3 hours and then 40 km per hour for 2 hours. How far does it go?",
    "Mia has 3 times as many stickers as Leo. Together they have 48 stickers. How many does Mia have?",
    "A garden is 12 m long and 7 m wide. Fencing costs $5 per metre. How much does fencing the garden cost?",
    "Sam saves $35 each week. He wants a bike that costs $420. How many weeks must he save?",
    "A class of 28 students splits into teams of 4. Each team needs 3 balls. How many balls are needed?",
    "Anna bought 5 notebooks at $2.40 each and a pen for $1.80. She paid with $20. What is her change?",
]
