"""`python -m hub dashboard`: a small local web page over InfluxDB for people without Chronograf.

`queries` builds the InfluxQL from validated parameters and shapes the answers (no I/O),
`server` serves the page and its JSON endpoints, `cli` is the click command.
"""
