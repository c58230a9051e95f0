//! gRPC-JSON transcoding: a route with `grpc_json` answers JSON requests by
//! calling the gRPC methods their `google.api.http` annotations name, on
//! the route's HTTP/2 upstream, and answers with the reply as JSON.
//!
//! ```toml
//! [[routes]]
//! path = "/v1/{*rest}"
//! upstream = "greeter"            # protocol = "h2"
//! grpc_json = { descriptor_set = "greeter.pb", services = ["helloworld.Greeter"] }
//! ```
//!
//! The descriptor set is what `protoc --include_imports
//! --descriptor_set_out=greeter.pb greeter.proto` writes (with
//! `google/api/annotations.proto` imported). For each method of the listed
//! services, its `google.api.http` rule (and `additional_bindings`) maps an
//! HTTP method and path template (`/v1/users/{id}`, `{name=**}`) to the
//! call: path variables, then the body (`body: "*"`, or one field), then
//! the query parameters fill the request message; the reply message is
//! printed as JSON (proto3 JSON mapping, lowerCamelCase names). A gRPC
//! error becomes its HTTP status (NOT_FOUND 404, INVALID_ARGUMENT 400,
//! UNAUTHENTICATED 401, ...) with ringgate's JSON error body and the
//! `grpc-status` / `grpc-message` headers.
//!
//! Envoy's `grpc_json_transcoder` and APISIX's `grpc-transcode` are the
//! anchors; prost-reflect reads the descriptor set and does the JSON
//! mapping.
//!
//! A server-streaming method answers with a JSON array, streamed as the
//! replies come (chunked; to an HTTP/1.0 client, ended by the close):
//! `[{...},{...}]`, `[]` for none. An error before the first reply is an
//! error answer as for a unary call; one after it ends the array, and the
//! gRPC status goes in the trailer fields `grpc-status` / `grpc-message`
//! (to an HTTP/1.0 client, which gets no trailers, the connection closes
//! without the closing `]`, so a cut stream never reads as a whole one).
//! Methods that take a stream (client or bidirectional streaming) cannot be
//! transcoded: their rule is a config error.

use crate::config::Errors;
use crate::error::{Error, ErrorKind};
use crate::proxy::forward::{Conn, Outcome};
use crate::runtime::worker::{Generation, Worker};
use bytes::Bytes;
use monoio::io::AsyncWriteRentExt;
use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor,
    ReflectMessage, Value,
};
use serde::Deserialize;
use std::future::poll_fn;
use std::sync::Arc;
use std::time::Instant;

/// `grpc_json = { ... }` on a route, as written.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GrpcJsonFile {
    /// The compiled descriptor set (`protoc --include_imports
    /// --descriptor_set_out`).
    pub descriptor_set: String,
    /// Fully qualified services whose annotated methods are served.
    pub services: Vec<String>,
}

/// One segment of a path template.
#[derive(Debug, Clone, PartialEq)]
enum Seg {
    /// A literal segment.
    Lit(String),
    /// `{field}` or `{field=*}`: one segment into a field (dotted path).
    Var(String),
    /// `{field=**}` (last): the rest of the path into a field.
    Rest(String),
    /// `*`: any one segment, not captured.
    Any,
}

/// One HTTP binding of a method.
struct Binding {
    method: http::Method,
    segs: Vec<Seg>,
    /// `body`: `*`, a field, or none.
    body: Option<String>,
    call: MethodDescriptor,
    /// `/package.Service/Method`.
    grpc_path: String,
}

/// A route's transcoder, compiled.
pub struct GrpcJson {
    bindings: Vec<Binding>,
    describe: String,
}

impl std::fmt::Debug for GrpcJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe)
    }
}

impl PartialEq for GrpcJson {
    fn eq(&self, other: &Self) -> bool {
        self.describe == other.describe
    }
}

/// Compiles a route's `grpc_json` (`key`: `routes[N].grpc_json`).
pub fn compile(f: &GrpcJsonFile, key: &str, errs: &mut Errors) -> Option<Arc<GrpcJson>> {
    let bytes = match std::fs::read(&f.descriptor_set) {
        Ok(b) => b,
        Err(e) => {
            errs.push(
                format!("{key}.descriptor_set"),
                format!("cannot read {:?}: {e}", f.descriptor_set),
                "give the file protoc --include_imports --descriptor_set_out=FILE wrote",
            );
            return None;
        }
    };
    let pool = match DescriptorPool::decode(bytes.as_slice()) {
        Ok(p) => p,
        Err(e) => {
            errs.push(
                format!("{key}.descriptor_set"),
                format!("{:?} is not a descriptor set: {e}", f.descriptor_set),
                "write it with protoc --include_imports --descriptor_set_out=FILE",
            );
            return None;
        }
    };
    let Some(http_ext) = pool.get_extension_by_name("google.api.http") else {
        errs.push(
            format!("{key}.descriptor_set"),
            "has no google.api.http annotations",
            "import google/api/annotations.proto in the .proto and pass --include_imports",
        );
        return None;
    };
    if f.services.is_empty() {
        errs.push(
            format!("{key}.services"),
            "is empty",
            "list the services to serve, e.g. [\"helloworld.Greeter\"]",
        );
    }
    let mut bindings = Vec::new();
    for name in &f.services {
        let Some(service) = pool.get_service_by_name(name) else {
            errs.push(
                format!("{key}.services"),
                format!("{name:?} is not in the descriptor set"),
                "use the fully qualified name, e.g. \"helloworld.Greeter\"",
            );
            continue;
        };
        for m in service.methods() {
            let opts = m.options();
            if !opts.has_extension(&http_ext) {
                continue;
            }
            let rule = opts.get_extension(&http_ext);
            let Some(rule) = rule.as_message() else {
                continue;
            };
            if m.is_client_streaming() {
                errs.push(
                    format!("{key}.services"),
                    format!(
                        "{} takes a stream: only unary and server-streaming methods are transcoded",
                        m.full_name()
                    ),
                    "remove its google.api.http rule, or call it with gRPC",
                );
                continue;
            }
            let mut rules = vec![rule.clone()];
            if let Some(Value::List(more)) =
                rule.get_field_by_name("additional_bindings").as_deref()
            {
                rules.extend(more.iter().filter_map(|v| v.as_message().cloned()));
            }
            for r in rules {
                match binding(&r, &m) {
                    Ok(b) => bindings.push(b),
                    Err(msg) => errs.push(
                        format!("{key}.services"),
                        format!("{}: {msg}", m.full_name()),
                        "fix the method's google.api.http rule",
                    ),
                }
            }
        }
    }
    if bindings.is_empty() && errs.0.is_empty() {
        errs.push(
            format!("{key}.services"),
            "no method of these services has a google.api.http rule",
            "annotate the methods with option (google.api.http)",
        );
    }
    Some(Arc::new(GrpcJson {
        bindings,
        describe: format!("grpc_json({:?}, {:?})", f.descriptor_set, f.services),
    }))
}

/// One `HttpRule` as a binding.
fn binding(rule: &DynamicMessage, m: &MethodDescriptor) -> Result<Binding, String> {
    let text = |n: &str| match rule.get_field_by_name(n).as_deref() {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    let (method, pattern) = if let Some(p) = text("get") {
        (http::Method::GET, p)
    } else if let Some(p) = text("post") {
        (http::Method::POST, p)
    } else if let Some(p) = text("put") {
        (http::Method::PUT, p)
    } else if let Some(p) = text("delete") {
        (http::Method::DELETE, p)
    } else if let Some(p) = text("patch") {
        (http::Method::PATCH, p)
    } else if let Some(Value::Message(c)) = rule.get_field_by_name("custom").as_deref() {
        let kind = match c.get_field_by_name("kind").as_deref() {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        };
        let path = match c.get_field_by_name("path").as_deref() {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        };
        let method = http::Method::from_bytes(kind.as_bytes()).map_err(|e| e.to_string())?;
        (method, path)
    } else {
        return Err(String::from("the rule names no HTTP method"));
    };
    let segs = template(&pattern)?;
    for s in &segs {
        if let Seg::Var(f) | Seg::Rest(f) = s {
            field_path(&m.input(), f).ok_or_else(|| format!("{pattern}: no field {f:?}"))?;
        }
    }
    let body = text("body");
    if let Some(b) = body.as_deref()
        && b != "*"
    {
        field_path(&m.input(), b).ok_or_else(|| format!("body: no field {b:?}"))?;
    }
    Ok(Binding {
        method,
        segs,
        body,
        call: m.clone(),
        grpc_path: format!("/{}/{}", m.parent_service().full_name(), m.name()),
    })
}

/// Parses a path template (`/v1/{name=shelves/*}` is taken as one
/// variable over the segments it covers only when that is `*` or `**`).
fn template(p: &str) -> Result<Vec<Seg>, String> {
    let p = p.split(':').next().unwrap_or(p);
    let Some(rest) = p.strip_prefix('/') else {
        return Err(format!("{p:?} does not start with '/'"));
    };
    let mut out = Vec::new();
    for s in rest.split('/') {
        if let Some(v) = s.strip_prefix('{').and_then(|v| v.strip_suffix('}')) {
            match v.split_once('=') {
                None => out.push(Seg::Var(v.to_string())),
                Some((f, "*")) => out.push(Seg::Var(f.to_string())),
                Some((f, "**")) => out.push(Seg::Rest(f.to_string())),
                Some(_) => {
                    return Err(format!(
                        "{p:?}: only {{f}}, {{f=*}} and {{f=**}} are served"
                    ));
                }
            }
        } else if s == "*" {
            out.push(Seg::Any);
        } else if s.contains('{') || s.contains('}') {
            return Err(format!("{p:?}: a variable must be a whole segment"));
        } else {
            out.push(Seg::Lit(s.to_string()));
        }
    }
    if out.iter().rev().skip(1).any(|s| matches!(s, Seg::Rest(_))) {
        return Err(format!("{p:?}: ** only as the last segment"));
    }
    Ok(out)
}

/// The field a dotted path names (the last one), through nested messages.
fn field_path(msg: &MessageDescriptor, path: &str) -> Option<FieldDescriptor> {
    let mut desc = msg.clone();
    let mut parts = path.split('.').peekable();
    while let Some(p) = parts.next() {
        let f = desc.get_field_by_name(p)?;
        if parts.peek().is_none() {
            return Some(f);
        }
        match f.kind() {
            Kind::Message(m) => desc = m,
            _ => return None,
        }
    }
    None
}

/// Sets a dotted field from its text form (path variables, query
/// parameters); a repeated field gets the value appended.
fn set_text(msg: &mut DynamicMessage, path: &str, text: &str) -> Result<(), String> {
    let (head, last) = match path.rsplit_once('.') {
        Some((h, l)) => (Some(h), l),
        None => (None, path),
    };
    let mut target = msg;
    if let Some(h) = head {
        for p in h.split('.') {
            let f = target
                .descriptor()
                .get_field_by_name(p)
                .ok_or_else(|| format!("no field {p:?}"))?;
            let Kind::Message(_) = f.kind() else {
                return Err(format!("{p:?} is not a message"));
            };
            target = match target.get_field_mut(&f) {
                Value::Message(m) => m,
                _ => return Err(format!("{p:?} is not a message")),
            };
        }
    }
    let f = target
        .descriptor()
        .get_field_by_name(last)
        .ok_or_else(|| format!("no field {last:?}"))?;
    let bad = || format!("{text:?} is not a valid {last}");
    let v = match f.kind() {
        Kind::String => Value::String(text.to_string()),
        Kind::Bytes => Value::Bytes(Bytes::copy_from_slice(text.as_bytes())),
        Kind::Bool => Value::Bool(text.parse().map_err(|_| bad())?),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(text.parse().map_err(|_| bad())?),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(text.parse().map_err(|_| bad())?),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(text.parse().map_err(|_| bad())?),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(text.parse().map_err(|_| bad())?),
        Kind::Float => Value::F32(text.parse().map_err(|_| bad())?),
        Kind::Double => Value::F64(text.parse().map_err(|_| bad())?),
        Kind::Enum(e) => Value::EnumNumber(
            e.get_value_by_name(text)
                .map(|v| v.number())
                .or_else(|| text.parse().ok())
                .ok_or_else(bad)?,
        ),
        Kind::Message(_) => return Err(format!("{last:?} is a message")),
    };
    if f.is_list() {
        if let Value::List(l) = target.get_field_mut(&f) {
            l.push(v);
        }
    } else {
        target.set_field(&f, v);
    }
    Ok(())
}

/// Percent-decodes a path segment or query component (`+` is a space in
/// a query).
fn unescape(s: &str, query: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' if query => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl GrpcJson {
    /// The binding for a request, and its path variables.
    fn find(&self, method: &[u8], path: &str) -> Option<(&Binding, Vec<(String, String)>)> {
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        'next: for b in &self.bindings {
            if b.method.as_str().as_bytes() != method {
                continue;
            }
            let mut vars = Vec::new();
            let mut i = 0;
            for s in &b.segs {
                match s {
                    Seg::Rest(f) => {
                        if i >= segs.len() {
                            continue 'next;
                        }
                        vars.push((f.clone(), unescape(&segs[i..].join("/"), false)));
                        i = segs.len();
                        break;
                    }
                    _ if i >= segs.len() => continue 'next,
                    Seg::Lit(l) if l == segs[i] => {}
                    Seg::Lit(_) => continue 'next,
                    Seg::Any => {}
                    Seg::Var(f) => vars.push((f.clone(), unescape(segs[i], false))),
                }
                i += 1;
            }
            if i == segs.len() {
                return Some((b, vars));
            }
        }
        None
    }
}

/// The HTTP status for a gRPC status code.
pub fn http_status(code: u32) -> u16 {
    match code {
        0 => 200,
        1 => 499,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500,
    }
}

/// Serves a transcoded request: the whole JSON body read, the call made on
/// the route's upstream, the reply written. Consumes the request.
pub async fn serve<S: crate::http::ClientIo>(
    w: &Worker,
    snap: &Generation,
    route: usize,
    t: &GrpcJson,
    client: &mut S,
    c: &mut Conn,
) -> Outcome {
    let cfg = &snap.config;
    let rc = &cfg.routes[route];
    let up_id = rc.upstream;
    c.upstream_id = Some(up_id);
    let up_cfg = &cfg.upstreams[up_id];
    let method = c.head.method.of(&c.buf).to_vec();
    let pq = String::from_utf8_lossy(c.head.path_query.of(&c.buf)).into_owned();
    let (path, query) = pq.split_once('?').unwrap_or((pq.as_str(), ""));
    let Some((b, vars)) = t.find(&method, path) else {
        return Outcome::Error(Error::new(
            ErrorKind::NoRoute,
            "no gRPC method is bound to this path",
        ));
    };
    let body = match crate::http::conn::read_body(
        client,
        c,
        cfg.server.max_body_bytes as usize,
        cfg.server.idle_timeout,
    )
    .await
    {
        Ok(b) => b,
        Err((413, _)) => {
            return Outcome::Error(
                Error::new(ErrorKind::BodyTooLarge, "request body too large").closing(true),
            );
        }
        Err(_) => return Outcome::Abort,
    };
    let end = c.body_end;
    // The request message: body, then path variables, then the query.
    let input = b.call.input();
    let mut msg = DynamicMessage::new(input.clone());
    let rid = c.rid;
    let bad = |m: String| crate::filter::Reply::error(400, &m, rid.as_bytes());
    match b.body.as_deref() {
        Some("*") if !body.is_empty() => {
            let mut de = serde_json::Deserializer::from_slice(&body);
            match DynamicMessage::deserialize(input.clone(), &mut de) {
                Ok(m) => msg = m,
                Err(e) => return finish(w, client, c, bad(format!("body: {e}")), end).await,
            }
        }
        Some(field) if field != "*" && !body.is_empty() => {
            let Some(f) = field_path(&input, field) else {
                return finish(w, client, c, bad(format!("no field {field}")), end).await;
            };
            let v = match f.kind() {
                Kind::Message(m) => {
                    let mut de = serde_json::Deserializer::from_slice(&body);
                    match DynamicMessage::deserialize(m, &mut de) {
                        Ok(m) => Value::Message(m),
                        Err(e) => {
                            return finish(w, client, c, bad(format!("body: {e}")), end).await;
                        }
                    }
                }
                _ => match serde_json::from_slice::<serde_json::Value>(&body) {
                    Ok(serde_json::Value::String(s)) => {
                        if let Err(e) = set_text(&mut msg, field, &s) {
                            return finish(w, client, c, bad(e), end).await;
                        }
                        Value::Bool(false)
                    }
                    Ok(other) => {
                        if let Err(e) = set_text(&mut msg, field, &other.to_string()) {
                            return finish(w, client, c, bad(e), end).await;
                        }
                        Value::Bool(false)
                    }
                    Err(e) => return finish(w, client, c, bad(format!("body: {e}")), end).await,
                },
            };
            if let Value::Message(_) = v {
                msg.set_field(&f, v);
            }
        }
        _ => {}
    }
    for (f, v) in &vars {
        if let Err(e) = set_text(&mut msg, f, v) {
            return finish(w, client, c, bad(e), end).await;
        }
    }
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = unescape(k, true);
        if field_path(&input, &k).is_some()
            && let Err(e) = set_text(&mut msg, &k, &unescape(v, true))
        {
            return finish(w, client, c, bad(e), end).await;
        }
    }
    let encoded = msg.encode_to_vec();
    let mut frame = Vec::with_capacity(5 + encoded.len());
    frame.push(0);
    frame.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    frame.extend_from_slice(&encoded);

    // The call.
    let up = &snap.upstreams[up_id];
    let list = up.list();
    let Some(ti) = crate::upstream::balance::pick(up, &list, up_cfg.balance, None, 0) else {
        return Outcome::Error(Error::new(
            ErrorKind::NoHealthyTarget,
            "no healthy upstream target",
        ));
    };
    let target = &*list.targets[ti];
    c.upstream_addr = Some(target.addr);
    let deadline = c.started + up_cfg.request_timeout;
    let started = Instant::now();
    if b.call.is_server_streaming() {
        return stream(
            w, cfg, b, target, up_cfg, client, c, frame, deadline, started, end,
        )
        .await;
    }
    let call = async {
        let resp = open_call(b, target, up_cfg, rid.as_bytes(), frame).await?;
        let head_status = resp.headers().get("grpc-status").cloned();
        let head_message = resp.headers().get("grpc-message").cloned();
        let mut body = resp.into_body();
        let mut data = Vec::new();
        while let Some(d) = poll_fn(|cx| body.poll_data(cx)).await {
            let d = d.map_err(closed)?;
            let _ = body.flow_control().release_capacity(d.len());
            data.extend_from_slice(&d);
            if data.len() as u64 > cfg.server.max_body_bytes {
                return Err(Error::new(
                    ErrorKind::ResponseTooLarge,
                    "upstream response too large",
                ));
            }
        }
        let trailers = poll_fn(|cx| body.poll_trailers(cx)).await.map_err(closed)?;
        let code = trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status").cloned())
            .or(head_status);
        let message = trailers
            .as_ref()
            .and_then(|t| t.get("grpc-message").cloned())
            .or(head_message);
        Ok((code, message, data))
    };
    let (code, message, data) = match monoio::time::timeout_at(deadline.into(), call).await {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return Outcome::Error(e),
        Err(_) => {
            return Outcome::Error(Error::new(ErrorKind::UpstreamTimeout, "upstream timed out"));
        }
    };
    c.upstream_us = Some(started.elapsed().as_micros() as u64);
    let code: u32 = code
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let reply = if code == 0 {
        let payload = if data.len() >= 5 { &data[5..] } else { &[][..] };
        match DynamicMessage::decode(b.call.output(), payload) {
            Ok(m) => match serde_json::to_vec(&m) {
                Ok(json) => crate::filter::Reply {
                    status: 200,
                    headers: b"grpc-status: 0\r\n".to_vec(),
                    content_type: "application/json",
                    body: json,
                },
                Err(_) => crate::filter::Reply::error(
                    502,
                    "invalid response from upstream",
                    rid.as_bytes(),
                ),
            },
            Err(_) => {
                crate::filter::Reply::error(502, "invalid response from upstream", rid.as_bytes())
            }
        }
    } else {
        status_reply(code, message.as_ref(), rid.as_bytes())
    };
    finish(w, client, c, reply, end).await
}

/// Opens the call's stream on the target: the request message sent whole.
async fn open_call(
    b: &Binding,
    target: &crate::upstream::pool::TargetState,
    up_cfg: &crate::config::UpstreamConfig,
    rid: &[u8],
    frame: Vec<u8>,
) -> Result<http::Response<h2::RecvStream>, Error> {
    let send = crate::upstream::h2::sender(target, up_cfg.tls.as_deref(), up_cfg.connect_timeout)
        .await
        .map_err(|e| e.error())?;
    let req = http::Request::builder()
        .method(http::Method::POST)
        .uri(format!(
            "{}://{}{}",
            if up_cfg.tls.is_some() {
                "https"
            } else {
                "http"
            },
            target.addr,
            b.grpc_path
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-request-id", rid)
        .body(())
        .map_err(|_| Error::new(ErrorKind::BadRequest, "request cannot be sent over HTTP/2"))?;
    let mut send = send.ready().await.map_err(closed)?;
    let (resp, mut stream) = send.send_request(req, false).map_err(closed)?;
    crate::http::h2::send_all(&mut stream, Bytes::from(frame), true)
        .await
        .map_err(closed)?;
    resp.await.map_err(closed)
}

fn closed(_: h2::Error) -> Error {
    Error::new(ErrorKind::UpstreamClosed, "upstream closed the stream")
}

/// The error answer for gRPC status `code` (not 0) with `message`.
fn status_reply(
    code: u32,
    message: Option<&http::HeaderValue>,
    rid: &[u8],
) -> crate::filter::Reply {
    let text = message
        .map(|m| unescape(m.to_str().unwrap_or(""), false))
        .unwrap_or_default();
    let status = http_status(code);
    let code_s = code.to_string();
    crate::filter::Reply {
        status,
        headers: format!("grpc-status: {code}\r\n").into_bytes(),
        content_type: "application/json",
        body: crate::filter::error_body(status, &text, &[("grpc_code", code_s.as_str())], rid),
    }
}

/// The gRPC status in `fields` (`None` when absent or unreadable).
fn grpc_status(fields: &http::HeaderMap) -> Option<u32> {
    fields
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// A server-streaming call: its replies, as they come, written as the
/// elements of a JSON array (see the module header).
#[allow(clippy::too_many_arguments)]
async fn stream<S: crate::http::ClientIo>(
    w: &Worker,
    cfg: &crate::config::Config,
    b: &Binding,
    target: &crate::upstream::pool::TargetState,
    up_cfg: &crate::config::UpstreamConfig,
    client: &mut S,
    c: &mut Conn,
    frame: Vec<u8>,
    deadline: Instant,
    started: Instant,
    end: usize,
) -> Outcome {
    let rid = c.rid;
    let opened = monoio::time::timeout_at(
        deadline.into(),
        open_call(b, target, up_cfg, rid.as_bytes(), frame),
    )
    .await;
    let resp = match opened {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Outcome::Error(e),
        Err(_) => {
            return Outcome::Error(Error::new(ErrorKind::UpstreamTimeout, "upstream timed out"));
        }
    };
    c.upstream_us = Some(started.elapsed().as_micros() as u64);
    // Trailers-Only: the call failed (or ended) before any reply.
    if let Some(code) = grpc_status(resp.headers()) {
        let reply = if code == 0 {
            array_reply(b"[]".to_vec())
        } else {
            status_reply(code, resp.headers().get("grpc-message"), rid.as_bytes())
        };
        return finish(w, client, c, reply, end).await;
    }
    let mut body = resp.into_body();
    let chunked = c.head.minor == 1;
    let close = !c.head.keep_alive || w.draining.get() || !chunked;
    let max = cfg.server.max_body_bytes as usize;
    let mut pending: Vec<u8> = Vec::new();
    let mut out: Vec<u8> = Vec::new();
    let mut sent = 0usize;
    let mut head_written = false;
    let relay = async {
        while let Some(d) = poll_fn(|cx| body.poll_data(cx)).await {
            let d = d.map_err(|e| Stop::Up(closed(e)))?;
            let _ = body.flow_control().release_capacity(d.len());
            pending.extend_from_slice(&d);
            // Every whole message in `pending`, as one JSON element each.
            out.clear();
            let mut at = 0;
            while pending.len() - at >= 5 {
                let len = u32::from_be_bytes([
                    pending[at + 1],
                    pending[at + 2],
                    pending[at + 3],
                    pending[at + 4],
                ]) as usize;
                if pending[at] != 0 || len > max {
                    return Err(Stop::Up(Error::new(
                        ErrorKind::InvalidResponse,
                        "compressed or oversized message from upstream",
                    )));
                }
                if pending.len() - at - 5 < len {
                    break;
                }
                let m = DynamicMessage::decode(b.call.output(), &pending[at + 5..at + 5 + len])
                    .map_err(|_| Stop::Up(invalid()))?;
                out.push(if sent == 0 { b'[' } else { b',' });
                serde_json::to_writer(&mut out, &m).map_err(|_| Stop::Up(invalid()))?;
                sent += 1;
                at += 5 + len;
            }
            pending.drain(..at);
            if pending.len() > max + 5 {
                return Err(Stop::Up(Error::new(
                    ErrorKind::ResponseTooLarge,
                    "upstream message too large",
                )));
            }
            if !out.is_empty() {
                if !head_written {
                    head_written = true;
                    write_stream_head(client, c, chunked, close)
                        .await
                        .map_err(|_| Stop::Client)?;
                }
                write_piece(client, c, &out, chunked)
                    .await
                    .map_err(|_| Stop::Client)?;
            }
        }
        if !pending.is_empty() {
            return Err(Stop::Up(Error::new(
                ErrorKind::InvalidResponse,
                "stream ended inside a message",
            )));
        }
        let trailers = poll_fn(|cx| body.poll_trailers(cx))
            .await
            .map_err(|e| Stop::Up(closed(e)))?;
        Ok(trailers)
    };
    let r = monoio::time::timeout_at(deadline.into(), relay).await;
    let trailers = match r {
        Ok(Ok(t)) => t.unwrap_or_default(),
        Ok(Err(Stop::Up(e))) if !head_written => return Outcome::Error(e),
        Err(_) if !head_written => {
            return Outcome::Error(Error::new(ErrorKind::UpstreamTimeout, "upstream timed out"));
        }
        // Cut after replies went out: the client must not take what it
        // has for the whole answer.
        _ => return Outcome::Abort,
    };
    let code = grpc_status(&trailers).unwrap_or(2);
    if !head_written {
        let reply = if code == 0 {
            array_reply(b"[]".to_vec())
        } else {
            status_reply(code, trailers.get("grpc-message"), rid.as_bytes())
        };
        return finish(w, client, c, reply, end).await;
    }
    if !chunked {
        // No trailers for an HTTP/1.0 client: a failed stream stays
        // unclosed, a whole one gets its `]`; the close ends both.
        if code == 0 && write_piece(client, c, b"]", false).await.is_err() {
            return Outcome::Abort;
        }
        return Outcome::Done { keep_alive: false };
    }
    let mut last = Vec::with_capacity(64);
    last.extend_from_slice(b"1\r\n]\r\n0\r\ngrpc-status: ");
    last.extend_from_slice(code.to_string().as_bytes());
    last.extend_from_slice(b"\r\n");
    if let Some(m) = trailers.get("grpc-message") {
        last.extend_from_slice(b"grpc-message: ");
        last.extend_from_slice(m.as_bytes());
        last.extend_from_slice(b"\r\n");
    }
    last.extend_from_slice(b"\r\n");
    c.bytes_out += last.len() as u64;
    if client.write_all(last).await.0.is_err() {
        return Outcome::Abort;
    }
    if close {
        return Outcome::Done { keep_alive: false };
    }
    c.consume_to(end);
    Outcome::Done { keep_alive: true }
}

/// Why a stream's relay stopped early.
enum Stop {
    /// The upstream failed or sent what cannot be transcoded.
    Up(Error),
    /// The client went away.
    Client,
}

fn invalid() -> Error {
    Error::new(ErrorKind::InvalidResponse, "invalid response from upstream")
}

/// A whole JSON array answer.
fn array_reply(body: Vec<u8>) -> crate::filter::Reply {
    crate::filter::Reply {
        status: 200,
        headers: b"grpc-status: 0\r\n".to_vec(),
        content_type: "application/json",
        body,
    }
}

/// The head of a streamed array: 200, chunked (or ended by the close).
async fn write_stream_head<S: crate::http::ClientIo>(
    client: &mut S,
    c: &mut Conn,
    chunked: bool,
    close: bool,
) -> std::io::Result<()> {
    let mut h = Vec::with_capacity(256);
    h.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n");
    if chunked {
        h.extend_from_slice(
            b"Transfer-Encoding: chunked\r\nTrailer: grpc-status, grpc-message\r\n",
        );
    }
    h.extend_from_slice(b"X-Request-Id: ");
    h.extend_from_slice(c.rid.as_bytes());
    h.extend_from_slice(b"\r\n");
    h.extend_from_slice(&c.resp_extra);
    if close {
        h.extend_from_slice(b"Connection: close\r\n");
    }
    h.extend_from_slice(b"\r\n");
    c.rhead.status = 200;
    c.bytes_out += h.len() as u64;
    client.write_all(h).await.0.map(|_| ())
}

/// Writes `data` as one chunk (as it is, without chunked framing).
async fn write_piece<S: crate::http::ClientIo>(
    client: &mut S,
    c: &mut Conn,
    data: &[u8],
    chunked: bool,
) -> std::io::Result<()> {
    let mut f = Vec::with_capacity(data.len() + 16);
    if chunked {
        f.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    }
    f.extend_from_slice(data);
    if chunked {
        f.extend_from_slice(b"\r\n");
    }
    c.bytes_out += f.len() as u64;
    client.write_all(f).await.0.map(|_| ())
}

/// Writes the answer and consumes the request (its body ends at `end`).
async fn finish<S: crate::http::ClientIo>(
    w: &Worker,
    client: &mut S,
    c: &mut Conn,
    reply: crate::filter::Reply,
    end: usize,
) -> Outcome {
    c.rhead.status = reply.status;
    let close = !c.head.keep_alive || w.draining.get();
    let rid = c.rid;
    let ok = crate::proxy::session::write_reply(
        client,
        &mut c.scratch,
        &reply,
        rid.as_bytes(),
        &c.resp_extra,
        close,
        c.head.is_head,
    )
    .await;
    c.count_reply();
    if !ok || close {
        return Outcome::Done { keep_alive: false };
    }
    c.consume_to(end);
    Outcome::Done { keep_alive: true }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        assert_eq!(
            template("/v1/users/{id}").unwrap(),
            vec![
                Seg::Lit("v1".into()),
                Seg::Lit("users".into()),
                Seg::Var("id".into())
            ]
        );
        assert_eq!(
            template("/v1/{name=**}").unwrap(),
            vec![Seg::Lit("v1".into()), Seg::Rest("name".into())]
        );
        assert!(template("v1").is_err());
        assert!(template("/v1/{a=**}/x").is_err());
        assert!(template("/v1/x{a}").is_err());
        assert_eq!(unescape("a%20b+c", true), "a b c");
        assert_eq!(unescape("a%2", false), "a%2");
        assert_eq!(unescape("%é%41", false), "%é A".replace(' ', ""));
    }

    #[test]
    fn grpc_codes_to_statuses() {
        for (code, status) in [
            (0, 200),
            (3, 400),
            (5, 404),
            (7, 403),
            (8, 429),
            (14, 503),
            (16, 401),
            (4, 504),
            (13, 500),
        ] {
            assert_eq!(http_status(code), status);
        }
    }
}
