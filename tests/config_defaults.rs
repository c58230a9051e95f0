//! The config as documented and as shown: `config/ringgate.example.toml`
//! claims to list every key with its default, so each value it shows for a
//! key with a default must be that default (it showed `[log] access =
//! "json"` while the default is "off"); and `GET /config` prints enum
//! values as the file spells them (`"access":"json"`, not `"Json"`).

mod support;

use ringgate::config::Config;
use support::admin_request;

const EXAMPLE: &str = include_str!("../config/ringgate.example.toml");

/// The example parsed as TOML.
fn example() -> toml::Value {
    toml::from_str(EXAMPLE).expect("the example is TOML")
}

/// The table at `path` (e.g. `["upstreams", "products", "health"]`).
fn table_mut<'a>(v: &'a mut toml::Value, path: &[&str]) -> &'a mut toml::Table {
    let mut t = v.as_table_mut().unwrap();
    for p in path {
        t = t
            .get_mut(*p)
            .and_then(|v| v.as_table_mut())
            .unwrap_or_else(|| panic!("the example has no table {path:?}"));
    }
    t
}

fn compile(v: &toml::Value) -> Config {
    let text = toml::to_string(v).unwrap();
    Config::parse(&text).unwrap_or_else(|e| panic!("config refused:\n{e}\n---\n{text}"))
}

/// For each key the example sets in the table at `path` (except `skip` and
/// sub-tables), compiles the example with and without that key and
/// compares what `section` reads from both: a difference means the value
/// shown is not the default. Returns the keys that differ.
fn keys_not_at_default(
    path: &[&str],
    skip: &[&str],
    section: impl Fn(&Config) -> String,
) -> Vec<String> {
    let full = example();
    let want = section(&compile(&full));
    let mut keys: Vec<String> = {
        let mut v = full.clone();
        table_mut(&mut v, path)
            .iter()
            .filter(|(k, v)| !v.is_table() && !skip.contains(&k.as_str()))
            .map(|(k, _)| k.clone())
            .collect()
    };
    keys.sort();
    assert!(!keys.is_empty(), "no keys in {path:?}");
    let mut differ = Vec::new();
    for k in keys {
        let mut v = full.clone();
        let shown = table_mut(&mut v, path).remove(&k).unwrap();
        let default = section(&compile(&v));
        if default != want {
            differ.push(format!(
                "{}.{k} = {shown} is not the default\n    shown:   {want}\n    default: {default}",
                path.join(".")
            ));
        }
    }
    differ
}

#[test]
fn the_example_shows_the_defaults() {
    let products = |c: &Config| -> String {
        let u = c.upstreams.iter().find(|u| u.name == "products").unwrap();
        format!(
            "discovery={:?} balance={:?} connect={:?} request={:?} try={:?} retries={} budget={} idle_per_target={} idle={:?}",
            u.discovery,
            u.balance,
            u.connect_timeout,
            u.request_timeout,
            u.try_timeout,
            u.retries,
            u.retry_budget_percent,
            u.max_idle_per_target,
            u.idle_timeout
        )
    };
    let upstream = |name: &'static str| {
        move |c: &Config| {
            let u = c.upstreams.iter().find(|u| u.name == name).unwrap();
            format!("{:?} {:?}", u.discovery, u.balance)
        }
    };
    let sub = |part: &'static str| {
        move |c: &Config| {
            let u = c.upstreams.iter().find(|u| u.name == "products").unwrap();
            match part {
                "health" => format!("{:?}", u.health),
                "outlier" => format!("{:?}", u.outlier),
                "breaker" => format!("{:?}", u.breaker),
                _ => format!("{:?}", u.fallback),
            }
        }
    };
    let mut differ = Vec::new();
    differ.extend(keys_not_at_default(&["server"], &[], |c| {
        format!("{:?}", c.server)
    }));
    differ.extend(keys_not_at_default(&["admin"], &[], |c| {
        format!("{:?}", c.admin)
    }));
    differ.extend(keys_not_at_default(&["log"], &[], |c| {
        format!("{:?}", c.log)
    }));
    differ.extend(keys_not_at_default(&["config"], &[], |c| {
        format!("{:?}", c.watch)
    }));
    differ.extend(keys_not_at_default(&["metrics"], &[], |c| {
        format!("{:?}", c.metrics_enabled)
    }));
    differ.extend(keys_not_at_default(&["cache"], &[], |c| {
        format!("{:?}", c.cache)
    }));
    // `targets` has no default: it is what the upstream is.
    differ.extend(keys_not_at_default(
        &["upstreams", "products"],
        &["targets"],
        products,
    ));
    differ.extend(keys_not_at_default(
        &["upstreams", "orders"],
        &["discovery", "dns_name"],
        upstream("orders"),
    ));
    differ.extend(keys_not_at_default(
        &["upstreams", "payments"],
        &["discovery"],
        upstream("payments"),
    ));
    for part in ["health", "outlier", "breaker"] {
        differ.extend(keys_not_at_default(
            &["upstreams", "products", part],
            &[],
            sub(part),
        ));
    }
    // The fallback's body is what it answers: no default.
    differ.extend(keys_not_at_default(
        &["upstreams", "products", "fallback"],
        &["body"],
        sub("fallback"),
    ));
    assert!(
        differ.is_empty(),
        "config/ringgate.example.toml shows values that are not the defaults \
         (show the default, and other choices in a comment):\n{}",
        differ.join("\n")
    );
}

/// The upstream connect timeout survives one dropped SYN: Linux sends the
/// first retransmission after 1 s, so a 1000 ms default turned one dropped
/// SYN into a 504.
#[test]
fn the_default_connect_timeout_survives_one_syn_retransmission() {
    let c = Config::parse(
        "[upstreams.a]\ntargets = [\"127.0.0.1:9\"]\n[[routes]]\npath = \"/\"\nupstream = \"a\"\n",
    )
    .unwrap();
    let t = c.upstreams[0].connect_timeout;
    assert!(
        t > std::time::Duration::from_millis(2000),
        "connect_timeout_ms defaults to {t:?}"
    );
}

/// `GET /config` printed `"access":"Json"`, `"io":"Auto"`: Rust names. It
/// prints what the file says.
#[test]
fn get_config_prints_values_as_the_file_spells_them() {
    let text = "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\npin = false\n\
                [admin]\nlisten = \"127.0.0.1:0\"\n\
                [upstreams.a]\ntargets = [\"127.0.0.1:9\"]\nbalance = \"least_conn\"\n\
                [[routes]]\npath = \"/\"\nupstream = \"a\"\n\
                [log]\naccess = \"json\"\npath = \"-\"\n";
    let cfg = Config::parse(text).unwrap();
    let server = ringgate::runtime::Server::start(cfg).unwrap();
    let (status, body) = admin_request(server.admin_addr().unwrap(), "GET", "/config", None, "");
    assert_eq!(status, 200, "{body}");
    for want in [
        "\"access\":\"json\"",
        "\"io\":\"auto\"",
        "\"io_uring_mode\":\"coop_taskrun\"",
        "\"balance\":\"least_conn\"",
    ] {
        assert!(body.contains(want), "no {want} in {body}");
    }
    for rust in ["Json", "Auto", "CoopTaskrun", "LeastConn"] {
        assert!(!body.contains(rust), "{rust} in {body}");
    }
}
