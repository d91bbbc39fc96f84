"""Data loading and batching, Ray-free: CoLA (``cola``: the TSV files or the hub, a generated
set for smoke tests, tokenized splits with CoLA's in/out-of-domain dev as an extra), CNN/DailyMail
(``cnndm``), and the length-grouped batches every study trains on (``batching``)."""
