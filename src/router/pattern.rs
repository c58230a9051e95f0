//! Parsing and validation of path patterns such as `/products/{id}` and
//! `/static/{*rest}` (build time only).

use super::MAX_PARAMS;

/// One `/`-separated piece of a pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Segment<'a> {
    /// Literal text that must equal the request segment byte for byte.
    Static(&'a str),
    /// `{name}`: exactly one non-empty segment.
    Param(&'a str),
    /// `{*name}`: the rest of the path, possibly empty; always last.
    CatchAll(&'a str),
}

/// A parsed pattern: the segments after the leading `/`.
#[derive(Debug)]
pub(crate) struct Pattern<'a> {
    pub(crate) segments: Vec<Segment<'a>>,
}

impl<'a> Pattern<'a> {
    /// Parameter names in order of appearance (catch-all included).
    pub(crate) fn param_names(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.segments.iter().filter_map(|s| match *s {
            Segment::Param(n) | Segment::CatchAll(n) => Some(n),
            Segment::Static(_) => None,
        })
    }
}

/// Parses `path`; the error is a reason phrased as "what is wrong; how to fix it".
pub(crate) fn parse(path: &str) -> Result<Pattern<'_>, String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(if path.is_empty() {
            String::from("the pattern is empty; patterns start with '/', e.g. \"/\" or \"/items\"")
        } else {
            format!("a pattern must start with '/'; write \"/{path}\"")
        });
    };
    if let Some(c) = path.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "it contains the character {c:?}, which never appears in a request path; \
             percent-encode it (e.g. %20 for a space)"
        ));
    }
    if path.contains(['?', '#']) {
        return Err(String::from(
            "it contains '?' or '#'; a pattern matches only the path, \
             so drop the query string or fragment",
        ));
    }

    let raw: Vec<&str> = rest.split('/').collect();
    let mut segments = Vec::with_capacity(raw.len());
    let mut names: Vec<&str> = Vec::new();
    for (i, seg) in raw.iter().enumerate() {
        let parsed = parse_segment(seg)?;
        match parsed {
            Segment::CatchAll(name) if i + 1 != raw.len() => {
                return Err(format!(
                    "the catch-all \"{{*{name}}}\" must be the last segment; move it to the end, \
                     or use \"{{{name}}}\" to match a single segment"
                ));
            }
            Segment::Param(name) | Segment::CatchAll(name) => {
                if names.contains(&name) {
                    return Err(format!(
                        "the parameter name \"{name}\" is used more than once; \
                         give each parameter a distinct name"
                    ));
                }
                names.push(name);
            }
            Segment::Static(_) => {}
        }
        segments.push(parsed);
    }
    if names.len() > MAX_PARAMS {
        return Err(format!(
            "it has {} parameters but at most {MAX_PARAMS} are supported; \
             replace some with static segments or a trailing {{*rest}}",
            names.len()
        ));
    }
    Ok(Pattern { segments })
}

fn parse_segment(seg: &str) -> Result<Segment<'_>, String> {
    if !seg.contains(['{', '}']) {
        return Ok(Segment::Static(seg));
    }
    if let Some(inner) = seg.strip_prefix('{') {
        if let Some(inner) = inner.strip_suffix('}') {
            let (catch_all, name) = match inner.strip_prefix('*') {
                Some(n) => (true, n),
                None => (false, inner),
            };
            if name.is_empty() {
                return Err(format!(
                    "the parameter \"{seg}\" has an empty name; name it, e.g. \"{{id}}\" or \"{{*rest}}\""
                ));
            }
            if name.contains(['{', '}']) {
                return Err(format!(
                    "the segment \"{seg}\" has nested or repeated braces; \
                     a parameter is a whole segment like \"{{id}}\""
                ));
            }
            if name.contains('*') {
                return Err(format!(
                    "the parameter \"{seg}\" has '*' inside its name; \
                     only a leading '*' is allowed, as in \"{{*rest}}\""
                ));
            }
            return Ok(if catch_all {
                Segment::CatchAll(name)
            } else {
                Segment::Param(name)
            });
        }
        if !inner.contains('}') {
            return Err(format!(
                "the segment \"{seg}\" has an unclosed '{{'; close it, e.g. \"{{id}}\""
            ));
        }
    } else if !seg.contains('{') {
        return Err(format!(
            "the segment \"{seg}\" has a '}}' without a matching '{{'; remove it or write \"{{name}}\""
        ));
    }
    Err(format!(
        "the segment \"{seg}\" mixes literal text and a parameter; a parameter must be a whole \
         segment, e.g. \"/files/{{name}}\" instead of \"/files/x{{name}}\""
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_segments() {
        let p = parse("/a/{id}/b/{*rest}").unwrap();
        assert_eq!(
            p.segments,
            vec![
                Segment::Static("a"),
                Segment::Param("id"),
                Segment::Static("b"),
                Segment::CatchAll("rest"),
            ]
        );
        assert_eq!(p.param_names().collect::<Vec<_>>(), ["id", "rest"]);
        assert_eq!(parse("/").unwrap().segments, vec![Segment::Static("")]);
        assert_eq!(
            parse("/a/").unwrap().segments,
            vec![Segment::Static("a"), Segment::Static("")]
        );
    }

    #[test]
    fn rejects_bad_segments() {
        for (p, needle) in [
            ("", "empty"),
            ("a/b", "must start with '/'"),
            ("/a/{*rest}/b", "must be the last"),
            ("/a/{id", "unclosed"),
            ("/a/{}", "empty name"),
            ("/a/{*}", "empty name"),
            ("/a{b}", "mixes literal text"),
            ("/{a}b", "mixes literal text"),
            ("/a{b", "mixes literal text"),
            ("/a}", "without a matching"),
            ("/{{a}}", "nested"),
            ("/{a*b}", "'*' inside"),
            ("/{id}/{id}", "more than once"),
            ("/a b", "percent-encode"),
            ("/a?b=1", "query"),
        ] {
            let err = parse(p).expect_err(p);
            assert!(err.contains(needle), "{p:?}: {err}");
        }
    }
}
