"""Fakes of the services the tool talks to, each a real server on 127.0.0.1.

- apns.py: FakeAPNs, Apple's push service (HTTP/2, provider tokens, Apple's rules);
- fcm.py: FakeFCM, Firebase Cloud Messaging v1 and Google's OAuth 2 token endpoint;
- webhook.py: FakeWebhook, a chat webhook, heartbeat or Pushgateway (HTTP/1.1).

Both push services run on one core: http2.py (connections, streams, records and the
transport events: GOAWAY, refused and reset streams, stalls, slow SETTINGS, latency),
threads.py (the servers' threads and their real-time event loop), rules.py (scripted
answers and transport events matched to requests) and pki.py (a CA, a server
certificate and keys). clock.py holds the real clock every fake waits on, which
freezegun leaves alone.
"""
