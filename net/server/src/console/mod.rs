//! The web console: served under `/ui` by the metrics listener (prometheus.rs routes every
//! `/ui...` request here), in the spirit of RabbitMQ's management UI and Redpanda Console
//! (docs/operations.md, "Web console").
//!
//! One static page (`index.html`, `console.js`, `console.css`: committed files compiled in with
//! `include_str!`, no framework, no build step, nothing fetched from elsewhere) polls JSON
//! endpoints under `/ui/api/` and draws the figures, its charts as inline SVG.
//!
//! **Authentication** is the CLI's: when the server has auth on, every `/ui/api/` request needs
//! a token, as `Authorization: Bearer <token>` or the `shardline_token` cookie that the login
//! form (`POST /ui/login`) sets (HttpOnly, SameSite=Strict). Reading needs the `describe`
//! permission on `cluster` (what the Metrics api needs); changing anything (redrive) needs
//! `admin` on `cluster`, and is a POST that must carry the `X-Shardline-Console` header the page
//! sets: a cross-site form or image cannot set it, and the listener allows no CORS, so another
//! site cannot make a logged-in browser redrive. With auth off the console is open, like the
//! protocol port: bind the metrics listener to loopback or a private network.

mod data;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use shardline_engine::Engine;

use crate::auth::{Operation, ResourceType};

const INDEX_HTML: &str = include_str!("index.html");
const CONSOLE_JS: &str = include_str!("console.js");
const CONSOLE_CSS: &str = include_str!("console.css");

/// Largest request body read (a login form, an empty POST).
const BODY_BYTES_MAX: usize = 16 << 10;
/// The header every state-changing request must carry (CSRF defence).
pub(crate) const CSRF_HEADER: &str = "x-shardline-console";
/// The cookie the login form sets.
pub(crate) const TOKEN_COOKIE: &str = "shardline_token";

/// What the console reads: the engine and the server's shared state (counters, auth).
pub(crate) struct Console {
    engine: Engine,
    shared: Arc<crate::Shared>,
}

/// Whether `path` (with its query) belongs to the console.
pub(crate) fn serves(path: &str) -> bool {
    let p = path.split('?').next().unwrap_or("");
    p == "/ui" || p.starts_with("/ui/")
}

/// One parsed HTTP request.
pub(crate) struct HttpRequest {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) query: Vec<(String, String)>,
    pub(crate) headers: Vec<(String, Vec<u8>)>,
    pub(crate) body: Vec<u8>,
}

impl HttpRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    pub(crate) fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The token from the bearer header, else from the cookie.
    fn token(&self) -> Option<String> {
        if let Some(t) = self
            .header("authorization")
            .and_then(|a| a.strip_prefix("Bearer "))
        {
            return Some(t.trim().to_string());
        }
        self.header("cookie")?.split(';').find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == TOKEN_COOKIE && !v.is_empty()).then(|| percent_decode(v))
        })
    }
}

/// One HTTP response.
pub(crate) struct HttpResponse {
    pub(crate) status: &'static str,
    pub(crate) content_type: &'static str,
    pub(crate) body: Vec<u8>,
    pub(crate) headers: Vec<(&'static str, String)>,
}

impl HttpResponse {
    fn new(status: &'static str, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        HttpResponse {
            status,
            content_type,
            body: body.into(),
            headers: Vec::new(),
        }
    }

    pub(crate) fn json(value: &serde_json::Value) -> Self {
        Self::new("200 OK", "application/json", value.to_string())
    }

    pub(crate) fn error(status: &'static str, message: &str) -> Self {
        Self::new(
            status,
            "application/json",
            serde_json::json!({ "error": message }).to_string(),
        )
    }

    fn redirect(to: &str) -> Self {
        let mut r = Self::new("303 See Other", "text/plain", "");
        r.headers.push(("Location", to.to_string()));
        r
    }
}

/// Who is asking: `None` principal when auth is off (everything allowed).
struct Caller {
    principal: Option<String>,
    admin: bool,
}

impl Console {
    pub(crate) fn new(engine: Engine, shared: Arc<crate::Shared>) -> Console {
        Console { engine, shared }
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    pub(crate) fn shared(&self) -> &crate::Shared {
        &self.shared
    }

    /// Answers one console request.
    pub(crate) fn handle(&self, req: &HttpRequest) -> HttpResponse {
        let method = req.method.as_str();
        match (method, req.path.as_str()) {
            ("GET" | "HEAD", "/ui" | "/ui/" | "/ui/index.html") => {
                HttpResponse::new("200 OK", "text/html; charset=utf-8", INDEX_HTML)
            }
            ("GET" | "HEAD", "/ui/console.js") => {
                HttpResponse::new("200 OK", "text/javascript; charset=utf-8", CONSOLE_JS)
            }
            ("GET" | "HEAD", "/ui/console.css") => {
                HttpResponse::new("200 OK", "text/css; charset=utf-8", CONSOLE_CSS)
            }
            ("POST", "/ui/login") => self.login(req),
            ("POST", "/ui/logout") => {
                let mut r = HttpResponse::redirect("/ui");
                r.headers.push((
                    "Set-Cookie",
                    format!("{TOKEN_COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"),
                ));
                r
            }
            (_, p) if p.starts_with("/ui/api/") => self.api(req),
            _ => HttpResponse::error("404 Not Found", "no such page"),
        }
    }

    fn caller(&self, req: &HttpRequest) -> Result<Caller, HttpResponse> {
        let Some(auth) = &self.shared.auth else {
            return Ok(Caller {
                principal: None,
                admin: true,
            });
        };
        let Some(token) = req.token() else {
            return Err(HttpResponse::error(
                "401 Unauthorized",
                "log in with a token (shardline token create)",
            ));
        };
        let Some(principal) = auth.token_principal(&token) else {
            return Err(HttpResponse::error(
                "401 Unauthorized",
                "unknown or revoked token",
            ));
        };
        if !auth.principal_allowed(&principal, ResourceType::Cluster, "*", Operation::Describe) {
            return Err(HttpResponse::error(
                "403 Forbidden",
                &format!("principal '{principal}' needs describe on cluster to use the console"),
            ));
        }
        let admin =
            auth.principal_allowed(&principal, ResourceType::Cluster, "*", Operation::Admin);
        Ok(Caller {
            principal: Some(principal),
            admin,
        })
    }

    fn login(&self, req: &HttpRequest) -> HttpResponse {
        let form = parse_query(std::str::from_utf8(&req.body).unwrap_or(""));
        let token = form
            .iter()
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        let ok = self
            .shared
            .auth
            .as_ref()
            .is_some_and(|a| a.token_principal(&token).is_some());
        if !ok {
            return HttpResponse::redirect("/ui?login=failed");
        }
        let mut r = HttpResponse::redirect("/ui");
        r.headers.push((
            "Set-Cookie",
            format!(
                "{TOKEN_COOKIE}={}; Path=/ui; HttpOnly; SameSite=Strict",
                percent_encode(&token)
            ),
        ));
        r
    }

    fn api(&self, req: &HttpRequest) -> HttpResponse {
        let caller = match self.caller(req) {
            Ok(c) => c,
            Err(r) => return r,
        };
        let path = req.path.trim_start_matches("/ui/api/");
        match (req.method.as_str(), path) {
            ("GET", "whoami") => HttpResponse::json(&serde_json::json!({
                "auth": self.shared.auth.is_some(),
                "principal": caller.principal,
                "admin": caller.admin,
            })),
            ("GET", "overview") => data::overview(self),
            ("GET", "topics") => data::topics(self),
            ("GET", "groups") => data::groups(self),
            ("GET", "queues") => data::queues(self),
            ("GET", "messages") => data::messages(self, req),
            ("POST", "redrive") => {
                if req.header(CSRF_HEADER).is_none() {
                    return HttpResponse::error(
                        "403 Forbidden",
                        "state-changing requests need the X-Shardline-Console header",
                    );
                }
                if !caller.admin {
                    return HttpResponse::error(
                        "403 Forbidden",
                        "redrive needs the admin permission on cluster",
                    );
                }
                data::redrive(self, req)
            }
            (_, "redrive") => HttpResponse::error("405 Method Not Allowed", "POST only"),
            _ => HttpResponse::error("404 Not Found", "no such endpoint"),
        }
    }
}

/// Reads the rest of a console request (its body), answers it and writes the response.
pub(crate) fn answer_http(
    console: &Console,
    mut stream: TcpStream,
    method: String,
    raw_path: String,
    headers: Vec<(String, Vec<u8>)>,
    mut body: Vec<u8>,
) -> std::io::Result<()> {
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let response = if length > BODY_BYTES_MAX {
        HttpResponse::error("413 Payload Too Large", "body too large")
    } else {
        while body.len() < length {
            let mut chunk = vec![0u8; length - body.len()];
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            body.extend_from_slice(&chunk[..n]);
        }
        body.truncate(length);
        let (path, query) = raw_path.split_once('?').unwrap_or((&raw_path, ""));
        let req = HttpRequest {
            method,
            path: path.to_string(),
            query: parse_query(query),
            headers,
            body,
        };
        let head_only = req.method == "HEAD";
        let mut r = console.handle(&req);
        if head_only {
            r.body.clear();
        }
        r
    };
    write_response(&mut stream, &response)
}

fn write_response(stream: &mut TcpStream, r: &HttpResponse) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\
         Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n\
         Content-Security-Policy: default-src 'self'; img-src 'self' data:; \
         frame-ancestors 'none'; form-action 'self'\r\n",
        r.status,
        r.content_type,
        r.body.len()
    );
    for (k, v) in &r.headers {
        head.push_str(k);
        head.push_str(": ");
        head.push_str(v);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(&r.body)?;
    stream.flush()
}

/// `a=1&b=x%20y` (also `+` for a space) into pairs.
pub(crate) fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or(""), 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_and_cookies_decode() {
        assert_eq!(
            parse_query("dlq=jobs.dlq&max=10&x=a%20b+c&bad=%zz&end=%4"),
            vec![
                ("dlq".into(), "jobs.dlq".into()),
                ("max".into(), "10".into()),
                ("x".into(), "a b c".into()),
                ("bad".into(), "%zz".into()),
                ("end".into(), "%4".into()),
            ]
        );
        assert_eq!(
            percent_decode(&percent_encode("id.s3cr=t/+")),
            "id.s3cr=t/+"
        );
        let req = HttpRequest {
            method: "GET".into(),
            path: "/ui/api/whoami".into(),
            query: Vec::new(),
            headers: vec![("cookie".into(), b"a=b; shardline_token=t%2Ek".to_vec())],
            body: Vec::new(),
        };
        assert_eq!(req.token().as_deref(), Some("t.k"));
        assert!(serves("/ui") && serves("/ui/api/x?y=1") && serves("/ui?login=failed"));
        assert!(!serves("/metrics") && !serves("/uix"));
    }
}
