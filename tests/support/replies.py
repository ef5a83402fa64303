"""SMTP reply codes by name (RFC 5321 4.2.3), for assertions: ``assert code == AUTH_INVALID``."""

READY = 220
CLOSING = 221
AUTH_OK = 235
OK = 250
AUTH_CONTINUE = 334
START_DATA = 354
UNAVAILABLE = 421  # service not available, closing (lockout, shutdown, connection limits)
MAILBOX_BUSY = 450
LOCAL_ERROR = 451  # tempfail: store, policy error, quota
INSUFFICIENT = 452  # too many recipients, over a quota
TLS_UNAVAILABLE = 454
SYNTAX_ERROR = 500
ARGUMENT_ERROR = 501
NOT_IMPLEMENTED = 502
BAD_SEQUENCE = 503
PARAMETER_NOT_IMPLEMENTED = 504
AUTH_REQUIRED = 530
AUTH_INVALID = 535
REFUSED = 550  # mailbox unavailable / policy refusal
TOO_BIG = 552
SENDER_REFUSED = 553
TRANSACTION_FAILED = 554
PARAMETERS_REFUSED = 555

NAMES = {v: k for k, v in dict(globals()).items() if k.isupper() and isinstance(v, int)}
