"""The push layer: how a follow-up becomes a notification, and the services that carry
it to the phone.

- protocol: PushRequest, PushOutcome, Attempt and RequestView, the Pusher protocol, the
  OutageBreaker; every service's dead-token reasons and configuration hints
- payload: title, payload, headers and the body cut, built once for every pusher
- tokens: which service a device token belongs to, its normalisation and masking
- log: LogPusher (FOLLOWUPS_PUSH=log, the default), sends nothing
- service: ServicePusher, the one attempt loop both services go through (3 attempts,
  resends, credential renewal, the breaker, halting), and the ServiceStrategy each
  service supplies
- apns/: APNs (FOLLOWUPS_PUSH=apns): its strategy, request, reasons, error reading and
  provider token
- fcm/: Firebase Cloud Messaging (FOLLOWUPS_PUSH=fcm): its strategy, message, reasons,
  error reading, credentials file and access tokens
- h2client: the HTTP/2 client both services use
- router: PushRouter (FOLLOWUPS_PUSH=apns,fcm), one pusher per service
- factory: make_pusher and describe_request, the one place that knows every adapter
- lazy: the lazy re-exports of apns/ and fcm/
- provider_token: push.apns.provider_token at its former address

Nothing here imports the services above it (delivery, testsend). The idle path imports
none of it, but for fcm/credentials (through settings) when FCM is on.
"""
