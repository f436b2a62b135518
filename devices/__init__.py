"""Simulated IoT devices that speak MQTT (paho-mqtt) and STOMP (stomp.py)."""
