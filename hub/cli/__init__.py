"""The command line, `python -m hub` (`iot-hub`): a thin shell over the library below it.

- `main`: the command group and how errors become exit codes;
- `run`: the hub's services; `control`: `send`, `devices` and `tail`.
"""
