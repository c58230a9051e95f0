//! W3C trace context (`traceparent`): passed through with a new span id for
//! the gateway's hop, or started when absent. `tracestate` is forwarded
//! untouched. The trace id goes into the access log next to the request id.

/// A trace context for one request: version-traceid-spanid-flags.
#[derive(Clone, Copy)]
pub struct TraceContext {
    /// 32 lower-case hex digits.
    pub trace_id: [u8; 32],
    /// The gateway's span id (16 hex digits), sent upstream as the parent.
    pub span_id: [u8; 16],
    /// Flags (2 hex digits).
    pub flags: [u8; 2],
}

fn is_hex(b: &[u8]) -> bool {
    b.iter()
        .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

impl TraceContext {
    /// Continues an incoming `traceparent` (when valid) or starts a trace,
    /// taking fresh ids from `random` (32 hex digits).
    pub fn new(incoming: Option<&[u8]>, random: &[u8; 32]) -> TraceContext {
        let mut span_id = [0u8; 16];
        span_id.copy_from_slice(&random[16..]);
        if let Some(tp) = incoming
            && tp.len() >= 55
            && tp[2] == b'-'
            && tp[35] == b'-'
            && tp[52] == b'-'
            && is_hex(&tp[..2])
            && &tp[..2] != b"ff"
            && is_hex(&tp[3..35])
            && is_hex(&tp[36..52])
            && is_hex(&tp[53..55])
            && tp[3..35].iter().any(|&c| c != b'0')
            && tp[36..52].iter().any(|&c| c != b'0')
            && (tp.len() == 55 || tp[55] == b'-')
        {
            let mut trace_id = [0u8; 32];
            trace_id.copy_from_slice(&tp[3..35]);
            return TraceContext {
                trace_id,
                span_id,
                flags: [tp[53], tp[54]],
            };
        }
        let mut trace_id = [0u8; 32];
        // The request id's entropy is reused; the span id differs from it.
        trace_id.copy_from_slice(random);
        TraceContext {
            trace_id,
            span_id,
            flags: *b"00",
        }
    }

    /// Writes the `traceparent` header line for the upstream request
    /// (assembled on the stack and copied once: this runs per request).
    #[inline]
    pub fn write_header(&self, out: &mut Vec<u8>) {
        let mut line = [0u8; 70];
        line[..16].copy_from_slice(b"traceparent: 00-");
        line[16..48].copy_from_slice(&self.trace_id);
        line[48] = b'-';
        line[49..65].copy_from_slice(&self.span_id);
        line[65] = b'-';
        line[66..68].copy_from_slice(&self.flags);
        line[68..].copy_from_slice(b"\r\n");
        out.extend_from_slice(&line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continues_valid_and_restarts_invalid() {
        let r = *b"0123456789abcdef0123456789abcdef";
        let tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceContext::new(Some(tp), &r);
        assert_eq!(&t.trace_id, b"4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(&t.span_id, b"0123456789abcdef");
        assert_eq!(&t.flags, b"01");
        let t = TraceContext::new(Some(b"00-XYZ"), &r);
        assert_eq!(&t.trace_id, &r);
        let zero = b"00-00000000000000000000000000000000-00f067aa0ba902b7-01";
        assert_eq!(&TraceContext::new(Some(zero), &r).trace_id, &r);
    }
}
