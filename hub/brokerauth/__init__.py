"""The broker's authorisation service: RabbitMQ's HTTP auth backend asks it whether a login may proceed.

`policy` decides (pure), `server` answers over HTTP. Standard library only, so compose can run it
from the checkout in a bare Python image: `python -m hub.brokerauth --port 8099 --operators hub,admin`.
"""
