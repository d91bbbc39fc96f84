"""Data loading and batching, Ray-free: any classification task's splits, selection slice and
token ids (``classification``), CoLA's files, the hub and a generated set for smoke tests
(``cola``: its in/out-of-domain dev rows as dev groups), CNN/DailyMail (``cnndm``), and the
length-grouped batches every study trains on (``batching``)."""
