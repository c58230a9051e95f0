//! One error type for everything that ends a request without a response
//! from a backend: what failed ([`ErrorKind`]), which side failed
//! ([`Side`]), whether the request may be tried again, and a message for
//! the JSON body. [`Error::status`] is the one place that maps an error to
//! the status the client gets; retries and metrics decide on the kind and
//! the side, never on status numbers.
//!
//! Performance notes: `Error` is a few words, `Copy`, with a `'static`
//! message: making one allocates nothing.

/// Which side of the gateway failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client: a malformed, oversized or slow request.
    Downstream,
    /// A backend: refused, closed, timed out, answered garbage.
    Upstream,
    /// ringgate itself: nothing to send the request to, a limit.
    Internal,
}

/// What failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed (400).
    BadRequest,
    /// The request body is over `server.max_body_bytes` (413).
    BodyTooLarge,
    /// The client did not send the request (or its body) in time (408).
    ClientTimeout,
    /// No route matches (404).
    NoRoute,
    /// A route matches the path but not the method (405).
    MethodNotAllowed,
    /// No target of the upstream is available (503).
    NoHealthyTarget,
    /// The connection to a target was refused or failed (502).
    ConnectFailed,
    /// Connecting to a target took longer than `connect_timeout_ms` (504).
    ConnectTimeout,
    /// The target closed the connection before a whole response (502).
    UpstreamClosed,
    /// No response within the upstream's timeouts (504).
    UpstreamTimeout,
    /// The response could not be parsed or framed (502).
    InvalidResponse,
    /// Every try answered with this 5xx status and no retry was left.
    UpstreamStatus(u16),
    /// A response read whole (a request ringgate makes itself) has a
    /// body over the caller's limit (502).
    ResponseTooLarge,
    /// The upstream's circuit breaker is open: nothing was sent (503).
    CircuitOpen,
    /// `Cache-Control: only-if-cached` and nothing stored (504).
    NotInCache,
}

/// An error that ends a request: see the module header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Error {
    /// What failed.
    pub kind: ErrorKind,
    /// Which side failed.
    pub side: Side,
    /// The same request may be sent to another target.
    pub retryable: bool,
    /// The client connection must close after the answer (the request's
    /// body is not known to have been read whole).
    pub close: bool,
    /// Message for the JSON body.
    pub message: &'static str,
}

impl Error {
    /// An error of `kind` with `message`; the side and whether a retry is
    /// safe follow from the kind.
    pub fn new(kind: ErrorKind, message: &'static str) -> Error {
        use ErrorKind::*;
        let side = match kind {
            BadRequest | BodyTooLarge | ClientTimeout => Side::Downstream,
            NoRoute | MethodNotAllowed | NoHealthyTarget | NotInCache => Side::Internal,
            ConnectFailed | ConnectTimeout | UpstreamClosed | UpstreamTimeout | InvalidResponse
            | UpstreamStatus(_) | ResponseTooLarge | CircuitOpen => Side::Upstream,
        };
        let retryable = matches!(
            kind,
            ConnectFailed | ConnectTimeout | UpstreamClosed | UpstreamTimeout | UpstreamStatus(_)
        );
        Error {
            kind,
            side,
            retryable,
            close: false,
            message,
        }
    }

    /// The same error, closing the client connection after the answer
    /// when `close`.
    pub fn closing(mut self, close: bool) -> Error {
        self.close |= close;
        self
    }

    /// The status the client gets.
    pub fn status(&self) -> u16 {
        use ErrorKind::*;
        match self.kind {
            BadRequest => 400,
            BodyTooLarge => 413,
            ClientTimeout => 408,
            NoRoute => 404,
            MethodNotAllowed => 405,
            NoHealthyTarget | CircuitOpen => 503,
            ConnectFailed | UpstreamClosed | InvalidResponse | ResponseTooLarge => 502,
            ConnectTimeout | UpstreamTimeout | NotInCache => 504,
            UpstreamStatus(s) => s,
        }
    }

    /// A backend failed (what `ringgate_upstream_errors_total` counts).
    pub fn is_upstream(&self) -> bool {
        self.side == Side::Upstream
    }

    /// A timeout, on either side.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::ClientTimeout | ErrorKind::ConnectTimeout | ErrorKind::UpstreamTimeout
        )
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({:?}, {:?} side)",
            self.message, self.kind, self.side
        )
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_one_status_and_side_each() {
        let e = Error::new(
            ErrorKind::ConnectTimeout,
            "timed out connecting to upstream",
        );
        assert_eq!(
            (e.status(), e.side, e.retryable),
            (504, Side::Upstream, true)
        );
        assert!(e.is_timeout() && e.is_upstream());
        let e = Error::new(ErrorKind::BodyTooLarge, "request body too large").closing(true);
        assert_eq!(
            (e.status(), e.side, e.retryable, e.close),
            (413, Side::Downstream, false, true)
        );
        let e = Error::new(ErrorKind::NoHealthyTarget, "no healthy upstream target");
        assert_eq!((e.status(), e.is_upstream()), (503, false));
        assert_eq!(
            Error::new(ErrorKind::UpstreamStatus(503), "x").status(),
            503
        );
        // An exchange's own failures: nothing sent, or an answer too large.
        let e = Error::new(ErrorKind::CircuitOpen, "x");
        assert_eq!(
            (e.status(), e.is_upstream(), e.retryable),
            (503, true, false)
        );
        let e = Error::new(ErrorKind::ResponseTooLarge, "x");
        assert_eq!(
            (e.status(), e.is_upstream(), e.retryable),
            (502, true, false)
        );
        assert!(
            Error::new(ErrorKind::InvalidResponse, "x")
                .to_string()
                .contains("Upstream")
        );
    }
}
