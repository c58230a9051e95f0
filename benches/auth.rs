//! JWT validation cost, cached against uncached, for HS256 and RS256.
//!
//! What is compared and why: every authenticated request pays either a full
//! validation (`Auth::verify_jwt`: base64, JSON header, signature, JSON
//! claims, checks) or — for a token this worker has seen — the per-worker
//! cache (`WorkerState::jwt`: hash of the token bytes, one probe, a memcmp,
//! an `Rc` clone). The cache is what keeps auth cheap enough to leave on,
//! so its figure should stay well under a microsecond; the uncached figures
//! show what a cache miss (or a flood of distinct tokens) costs, and how
//! much more an RSA check costs than an HMAC. API-key lookup (SHA-256 and a
//! map probe) is alongside for scale.
//!
//! Run: `cargo bench --bench auth`

use criterion::{Criterion, black_box, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ringgate::config::Config;
use ringgate::filter::auth::{Auth, WorkerState};
use std::sync::Arc;

const SECRET: &str = "bench-secret-0123456789abcdef0123456789abcdef";
const VAR: &str = "RINGGATE_BENCH_AUTH_SECRET";

fn setup() -> (Arc<Auth>, String, String) {
    // SAFETY: single-threaded here, before criterion or the gateway start
    // any thread.
    unsafe { std::env::set_var(VAR, SECRET) };
    let dir = env!("CARGO_MANIFEST_DIR");
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:0"
workers = 1

[upstreams.app]
targets = ["127.0.0.1:9"]

[[routes]]
path = "/r"
upstream = "app"
auth = ["jwt", "api_key"]

[auth.jwt]
algorithms = ["HS256", "RS256"]
secret_env = "{VAR}"
public_key_file = "{dir}/tests/data/auth/rsa_a.pub.pem"
issuer = "bench"
audience = ["api"]

[[consumers]]
id = "acme"
api_key_sha256 = "{}"
tier = "premium"
roles = ["reader"]
"#,
        hex::encode(ringgate::filter::auth::sha256(b"bench-api-key"))
    );
    let cfg = Config::parse(&toml).expect("bench config");
    let auth = cfg.auth.clone().expect("auth");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "sub": "user-1234",
        "iss": "bench",
        "aud": "api",
        "exp": now + 86_400,
        "iat": now,
        "roles": ["reader", "writer"],
        "scope": "orders:read orders:write",
    });
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let pem = std::fs::read(format!("{dir}/tests/data/auth/rsa_a.pem")).unwrap();
    let rs = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(&pem).unwrap(),
    )
    .unwrap();
    (auth, hs, rs)
}

fn bench(c: &mut Criterion) {
    let (auth, hs, rs) = setup();
    let ws = WorkerState::new(Some(&auth));
    assert!(auth.verify_jwt(hs.as_bytes()).is_ok());
    assert!(auth.verify_jwt(rs.as_bytes()).is_ok());

    let mut g = c.benchmark_group("auth");
    for (name, token) in [("hs256", &hs), ("rs256", &rs)] {
        let t = token.as_bytes();
        g.bench_function(format!("{name}/uncached"), |b| {
            b.iter(|| auth.verify_jwt(black_box(t)).unwrap())
        });
        ws.jwt(&auth, t).unwrap();
        g.bench_function(format!("{name}/cached"), |b| {
            b.iter(|| ws.jwt(&auth, black_box(t)).unwrap())
        });
    }
    g.bench_function("api_key", |b| {
        b.iter(|| ws.api_key(&auth, black_box(b"bench-api-key")).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
