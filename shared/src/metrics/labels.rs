//! The label values of the metrics whose value sets are closed, as enums:
//! each has `as_str` (the exact label value exported) and `ALL` (every
//! value, in the order their series are created at start). Callers pass
//! these to the event methods of [`Metrics`](super::Metrics), never strings.

/// Defines a label enum: variants with their label values, `ALL` and `as_str`.
macro_rules! label_enum {
    (
        $(#[$doc:meta])*
        $name:ident { $( $(#[$vdoc:meta])* $variant:ident => $label:literal ),+ $(,)? }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vdoc])* $variant ),+
        }

        impl $name {
            /// Every value, in the order their series are created.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The label value as exported.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $label ),+
                }
            }

            /// The value exported as `label`, if any.
            pub fn from_label(label: &str) -> Option<$name> {
                $name::ALL.iter().copied().find(|v| v.as_str() == label)
            }
        }
    };
}

label_enum! {
    /// How a session ended (`state` label).
    SessionEnd {
        Completed => "completed",
        Failed => "failed",
        Aborted => "aborted",
    }
}

impl SessionEnd {
    /// The end of a session whose state column says `state`; a state that is
    /// not an end state counts as `failed`.
    pub fn of_state(state: &str) -> SessionEnd {
        SessionEnd::from_label(state).unwrap_or(SessionEnd::Failed)
    }
}

label_enum! {
    /// Outcome of an ingest request (`outcome` label).
    RequestOutcome {
        /// A session was created.
        Created => "created",
        /// Answered from the session of an earlier request with the same id.
        Duplicate => "duplicate",
        /// Bad input; nothing changed.
        Rejected => "rejected",
        /// Our side failed; the request is retried.
        Error => "error",
    }
}

label_enum! {
    /// Outcome of a part job handled by a worker (`outcome` label).
    PartJobOutcome {
        Committed => "committed",
        Discarded => "discarded",
        AlreadyDone => "already_done",
        Failed => "failed",
    }
}

label_enum! {
    /// Why a part job went to the retry queue (`reason` label).
    RetryReason {
        /// The attempt failed.
        Error => "error",
        /// Another worker holds the part's lease.
        LeaseHeld => "lease_held",
    }
}

label_enum! {
    /// Why a part attempt's staging inode was abandoned (`reason` label).
    AbandonReason {
        AttemptFailed => "attempt_failed",
        /// The part deadline or minimum throughput cut the source read.
        SourceTooSlow => "source_too_slow",
        /// A newer attempt holds the part.
        Superseded => "superseded",
        SessionClosed => "session_closed",
    }
}

label_enum! {
    /// What recognised a duplicate part job (`by` label).
    DuplicateDetector {
        /// The part's done marker in Redis.
        Redis => "redis",
        /// The part already committed, or its session no longer open.
        Postgres => "postgres",
    }
}

label_enum! {
    /// A queue or exchange (`queue` label); any other name is `Other`.
    Queue {
        Requests => "ingest.requests",
        Parts => "ingest.parts",
        PartsRetry => "ingest.parts.retry",
        Events => "ingest.events",
        Dead => "ingest.dead",
        Other => "other",
    }
}

impl Queue {
    /// The label of the queue or exchange called `name`.
    pub fn of(name: &str) -> Queue {
        Queue::from_label(name).unwrap_or(Queue::Other)
    }

    /// The named queues and exchanges (`ALL` but `Other`): their publish
    /// series are created at start.
    pub fn named() -> impl Iterator<Item = Queue> {
        Queue::ALL.iter().copied().filter(|q| *q != Queue::Other)
    }

    /// The queues whose messages the system dead-letters.
    pub const DEAD_LETTER_SOURCES: [Queue; 2] = [Queue::Requests, Queue::Parts];
}

label_enum! {
    /// Outcome of a MooseFS master request (`outcome` label), as the client
    /// reports them.
    MfsOutcome {
        Ok => "ok",
        /// A MooseFS error status such as ENOENT.
        Status => "status",
        Timeout => "timeout",
        Disconnected => "disconnected",
    }
}

impl MfsOutcome {
    /// The outcome the client reported as `label`; one it adds later counts
    /// as the last one, `disconnected`.
    pub fn of(label: &str) -> MfsOutcome {
        MfsOutcome::from_label(label).unwrap_or(MfsOutcome::Disconnected)
    }
}

label_enum! {
    /// HTTP status class (`status` label of the HTTP metrics).
    StatusClass {
        Informational => "1xx",
        Success => "2xx",
        Redirection => "3xx",
        ClientError => "4xx",
        ServerError => "5xx",
    }
}

label_enum! {
    /// Why the S3 endpoint refused a request before (or instead of)
    /// answering it (`reason` label).
    S3LimitReason {
        /// Too many requests at once.
        Concurrency => "concurrency",
        /// The declared body is over the limit.
        BodySize => "body_size",
        /// The request failed outside an operation.
        Error => "error",
        /// The request took longer than allowed.
        Timeout => "timeout",
        /// The client stopped reading its response (connection cut).
        Stalled => "stalled",
    }
}

impl StatusClass {
    /// The classes created for every route and method when it is first seen
    /// (`1xx` and `3xx` appear only when they happen).
    pub const CREATED_FIRST: [StatusClass; 3] = [
        StatusClass::Success,
        StatusClass::ClientError,
        StatusClass::ServerError,
    ];

    /// The class of `status`; anything outside 100..=499 is `5xx`.
    pub fn of(status: u16) -> StatusClass {
        match status {
            100..=199 => StatusClass::Informational,
            200..=299 => StatusClass::Success,
            300..=399 => StatusClass::Redirection,
            400..=499 => StatusClass::ClientError,
            _ => StatusClass::ServerError,
        }
    }
}

/// The `method` label of an HTTP method: the usual ones by name, any other
/// as `other`.
pub fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

label_enum! {
    /// Outcome of a maintenance round (`outcome` label).
    RoundOutcome {
        Ok => "ok",
        Error => "error",
    }
}

label_enum! {
    /// A step of a maintenance round (`step` label).
    MaintenanceStep {
        Republish => "republish",
        Complete => "complete",
        Expire => "expire",
        /// Receiving S3 uploads idle past their expiry, aborted.
        S3Expire => "s3_expire",
        Sweep => "sweep",
        Gc => "gc",
    }
}

label_enum! {
    /// An external service (`service` label).
    Service {
        Postgres => "postgres",
        Redis => "redis",
        RabbitMq => "rabbitmq",
    }
}

label_enum! {
    /// The binary a process runs (`component` label of `mfs_ingest_build_info`).
    Component {
        Coordinator => "coordinator",
        Worker => "worker",
        S3 => "s3",
    }
}

label_enum! {
    /// What a lease renewal found (`outcome` label).
    Renewal {
        /// Still ours, extended by a full lifetime.
        Renewed => "renewed",
        /// Expired or someone else's: the attempt goes on, its fencing token
        /// decides at commit.
        Lost => "lost",
        /// Redis did not answer.
        Unknown => "unknown",
    }
}
