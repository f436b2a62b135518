"""Device twins: what each device should be (`desired`), what it says it is (`reported`), and the
commands that close the gap, sent when the device is online (`book.py` decides, `service.py` is
the handler its runner drives, `stored.py` is the twin as a point and back)."""
