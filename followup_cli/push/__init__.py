"""The push layer: how a follow-up becomes a notification, and the services that carry
it to the phone.

- protocol: PushRequest, PushOutcome and Attempt, the Pusher protocol, the OutageBreaker
- payload: title, payload, headers and the body cut, built once for every pusher
- tokens: which service a device token belongs to, its normalisation and masking
- log: LogPusher (FOLLOWUPS_PUSH=log, the default), sends nothing
- service: what the APNs and FCM pushers share (3 attempts, the breaker, halting)
- apns, provider_token: APNs (FOLLOWUPS_PUSH=apns)
- fcm: Firebase Cloud Messaging (FOLLOWUPS_PUSH=fcm)
- h2client: the HTTP/2 client both services use
- router: PushRouter (FOLLOWUPS_PUSH=apns,fcm), one pusher per service
- factory: make_pusher, the one place that knows every adapter

Nothing here imports the services above it (delivery, testsend); the idle path imports
none of it.
"""
