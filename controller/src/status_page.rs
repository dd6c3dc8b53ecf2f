//! The read-only status page (`twill controller --http-addr`): the cluster picture and a node
//! table, refreshing itself. With TLS on, the page asks for a token kept in the data directory
//! (only whoever can read that directory, the admin, gets in); a browser presents it once in
//! the address and keeps it as a cookie. With `--insecure` the page is open, like the API.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use twill_proto::v1 as pb;
use twill_telemetry::axum::extract::State;
use twill_telemetry::axum::http::{header, HeaderMap, StatusCode, Uri};
use twill_telemetry::axum::response::{IntoResponse, Response};
use twill_telemetry::axum::routing::get;
use twill_telemetry::axum::Router;

use crate::node::{Member, FORWARDED};
use crate::picture::{self, escape, MemberBox, Picture};

/// Where the page's token lives, next to the admin credential.
pub fn token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("status-token")
}

const COOKIE: &str = "twill_status";
/// How often the page reloads itself.
pub const REFRESH: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("status page token {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("status page token {path} is not 64 hex digits; delete it to have a new one made")]
    Malformed { path: PathBuf },
}

/// The token in `path`, made (32 random bytes, hex, mode 0600) when there is none yet, so a
/// bookmarked address keeps working across restarts.
pub fn load_or_create_token(path: &Path) -> Result<String, TokenError> {
    let io = |source| TokenError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(t) => {
            let t = t.trim().to_string();
            if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(t)
            } else {
                Err(TokenError::Malformed {
                    path: path.to_path_buf(),
                })
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let bytes: [u8; 32] = rand::random();
            let t: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            twill_pki::credentials::write_private(path, &format!("{t}\n")).map_err(io)?;
            Ok(t)
        }
        Err(e) => Err(io(e)),
    }
}

/// Who may see the page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    Open,
    Token(String),
}

/// Equal without telling, through timing, how much of a guess was right.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// What a request carries: the token from the query, a cookie or a bearer header.
#[derive(Debug, PartialEq, Eq)]
pub enum Presented {
    /// In the address: set the cookie and send the browser to the clean address.
    Query,
    Kept,
    Nothing,
    Wrong,
}

/// Pure: judges a request's credentials against the page's access.
pub fn presented(access: &Access, uri: &Uri, headers: &HeaderMap) -> Presented {
    let Access::Token(token) = access else {
        return Presented::Kept;
    };
    let query = uri
        .query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("token="));
    if let Some(q) = query {
        return if same(q, token) {
            Presented::Query
        } else {
            Presented::Wrong
        };
    }
    let cookies = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='));
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let mut any = false;
    for t in cookies.chain(bearer) {
        any = true;
        if same(t.trim(), token) {
            return Presented::Kept;
        }
    }
    if any {
        Presented::Wrong
    } else {
        Presented::Nothing
    }
}

#[derive(Clone)]
struct Page {
    member: Arc<Member>,
    access: Access,
    token_file: PathBuf,
}

/// The page's routes, for [`twill_telemetry::serve_router`].
pub fn router(member: Arc<Member>, access: Access, token_file: PathBuf) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/cluster.svg", get(image))
        .fallback(|| async { (StatusCode::NOT_FOUND, "try / or /cluster.svg\n") })
        .with_state(Page {
            member,
            access,
            token_file,
        })
}

/// Headers every answer carries: nothing cached, framed, sniffed or referred.
fn guarded(mut r: Response) -> Response {
    let h = r.headers_mut();
    for (k, v) in [
        (header::CACHE_CONTROL, "no-store"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'",
        ),
    ] {
        h.insert(k, header::HeaderValue::from_static(v));
    }
    r
}

/// `Some(answer)` when the request may not see the page (or must first be sent on).
fn gate(p: &Page, uri: &Uri, headers: &HeaderMap) -> Option<Response> {
    match presented(&p.access, uri, headers) {
        Presented::Kept => None,
        Presented::Query => {
            let Access::Token(t) = &p.access else {
                return None;
            };
            let cookie = format!("{COOKIE}={t}; Path=/; HttpOnly; SameSite=Strict");
            Some(
                (
                    StatusCode::SEE_OTHER,
                    [
                        (header::LOCATION, uri.path().to_string()),
                        (header::SET_COOKIE, cookie),
                    ],
                )
                    .into_response(),
            )
        }
        Presented::Nothing | Presented::Wrong => Some(
            (
                StatusCode::UNAUTHORIZED,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                format!(
                    "This status page needs its token: open this address with ?token= followed \
                     by the contents of {} (on the controller's host).\n",
                    p.token_file.display()
                ),
            )
                .into_response(),
        ),
    }
}

async fn index(State(p): State<Page>, uri: Uri, headers: HeaderMap) -> Response {
    if let Some(r) = gate(&p, &uri, &headers) {
        return guarded(r);
    }
    let (pic, reports) = gather(&p.member).await;
    guarded(
        (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            html(&pic, &reports),
        )
            .into_response(),
    )
}

async fn image(State(p): State<Page>, uri: Uri, headers: HeaderMap) -> Response {
    if let Some(r) = gate(&p, &uri, &headers) {
        return guarded(r);
    }
    let (pic, _) = gather(&p.member).await;
    guarded(
        (
            [(header::CONTENT_TYPE, "image/svg+xml")],
            picture::svg(&pic),
        )
            .into_response(),
    )
}

/// The members as this member sees them: roles from its Raft metrics and, on the leader, how
/// far each follower's log is behind.
fn members(m: &Member) -> Vec<MemberBox> {
    let x = m.raft.metrics().borrow().clone();
    let mem = x.membership_config.membership();
    let voters: Vec<u64> = mem.voter_ids().collect();
    let last = x.last_log_index.unwrap_or(0);
    mem.nodes()
        .map(|(id, n)| {
            let leader = x.current_leader == Some(*id);
            let state = if *id == m.id {
                format!("{:?}", x.state).to_lowercase()
            } else if leader {
                "leader".into()
            } else {
                let role = if voters.contains(id) {
                    "follower"
                } else {
                    "learner"
                };
                match x.replication.as_ref().map(|r| r.get(id)) {
                    Some(Some(Some(matched))) if last.saturating_sub(matched.index) > 100 => {
                        format!("{role}, {} behind", last - matched.index)
                    }
                    Some(Some(None)) | Some(None) => format!("{role}, not replicating"),
                    _ => role.to_string(),
                }
            };
            MemberBox {
                id: *id,
                addr: n.addr.clone(),
                state,
                leader,
            }
        })
        .collect()
}

/// Leases from this member's state machine; health reports from the leader (here, or asked).
async fn gather(m: &Member) -> (Picture, Vec<pb::NodeHealthEntry>) {
    let (leases, revision): (Vec<pb::Lease>, u64) = {
        let d = m.sm.read();
        (
            d.alloc
                .leases()
                .map(crate::convert::lease_to_proto)
                .collect(),
            d.alloc.revision(),
        )
    };
    let mut note = None;
    let reports = match m.leader() {
        Some((id, _)) if id == m.id => m
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .list(std::time::Instant::now()),
        Some((_, addr)) => match ask_leader(m, &addr).await {
            Ok(r) => r,
            Err(e) => {
                note = Some(format!("node health unavailable from the leader: {e}"));
                Vec::new()
            }
        },
        None => {
            note = Some("no leader: node health unknown".into());
            Vec::new()
        }
    };
    let leader = m.raft.metrics().borrow().current_leader.unwrap_or(0);
    let mut pic = Picture::new(members(m), &leases, &reports);
    pic.caption = picture::caption(leader, revision);
    if let Some(n) = note {
        pic.caption = format!("{}; {n}", pic.caption);
    }
    (pic, reports)
}

async fn ask_leader(m: &Member, addr: &str) -> Result<Vec<pb::NodeHealthEntry>, String> {
    let mut c = m
        .forward_client(addr)
        .map_err(|s| s.message().to_string())?;
    let mut req = tonic::Request::new(pb::ListHealthRequest {});
    req.metadata_mut()
        .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    req.set_timeout(Duration::from_secs(2));
    match tokio::time::timeout(Duration::from_secs(3), c.list_health(req)).await {
        Ok(Ok(r)) => Ok(r.into_inner().nodes),
        Ok(Err(s)) => Err(s.message().to_string()),
        Err(_) => Err("no answer within 3 s".into()),
    }
}

/// The page: the picture, then a row per node with every problem in full.
pub fn html(pic: &Picture, reports: &[pb::NodeHealthEntry]) -> String {
    let mut rows = String::new();
    let by_report = picture::by_node(reports);
    for n in &pic.nodes {
        let h = by_report
            .get(n.name.as_str())
            .and_then(|r| r.health.as_ref());
        let problems = match (&n.problem, h) {
            (None, _) => "healthy".to_string(),
            (Some(p), Some(h)) if !h.problems.is_empty() => {
                format!("{}<br>{}", escape(p), escape(&h.problems.join("; ")))
            }
            (Some(p), _) => escape(p),
        };
        rows.push_str(&format!(
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            if n.problem.is_some() { "bad" } else { "ok" },
            escape(&n.name),
            escape(n.subnet.as_deref().unwrap_or("-")),
            escape(n.public_ip.as_deref().unwrap_or("-")),
            escape(h.map(|h| h.backend.as_str()).unwrap_or("-")),
            problems,
        ));
    }
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{refresh}\">\
         <title>twill cluster</title>\
         <style>body{{font-family:sans-serif;margin:1em}} table{{border-collapse:collapse}} \
         td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}} tr.bad td{{background:#ffebee}}</style>\
         </head><body>\n{svg}\n<table><tr><th>node</th><th>subnet</th><th>public IP</th>\
         <th>backend</th><th>health</th></tr>\n{rows}</table>\n\
         <p>Read-only; reloads every {refresh} s.</p></body></html>\n",
        refresh = REFRESH.as_secs(),
        svg = picture::svg(pic),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, headers: &[(&str, &str)]) -> (Uri, HeaderMap) {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        (uri.parse().expect("uri"), h)
    }

    #[test]
    fn only_the_token_opens_the_page() {
        let t = "ab".repeat(32);
        let a = Access::Token(t.clone());
        let check = |uri: &str, h: &[(&str, &str)]| {
            let (u, h) = req(uri, h);
            presented(&a, &u, &h)
        };
        assert_eq!(check("/", &[]), Presented::Nothing);
        assert_eq!(check(&format!("/?token={t}"), &[]), Presented::Query);
        assert_eq!(check("/?token=abab", &[]), Presented::Wrong);
        assert_eq!(
            check("/", &[("cookie", &format!("x=1; {COOKIE}={t}"))]),
            Presented::Kept
        );
        assert_eq!(
            check("/", &[("cookie", &format!("{COOKIE}={}", "cd".repeat(32)))]),
            Presented::Wrong
        );
        assert_eq!(
            check("/", &[("authorization", &format!("Bearer {t}"))]),
            Presented::Kept
        );
        assert_eq!(
            presented(&Access::Open, &"/".parse().expect("uri"), &HeaderMap::new()),
            Presented::Kept
        );
    }

    #[test]
    fn the_token_is_made_once_private_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        let p = token_path(dir.path());
        let t = load_or_create_token(&p).expect("made");
        assert_eq!(t.len(), 64);
        let mode = std::fs::metadata(&p).expect("file").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_or_create_token(&p).expect("read"), t);
        std::fs::write(&p, "short\n").expect("damage");
        assert!(matches!(
            load_or_create_token(&p),
            Err(TokenError::Malformed { .. })
        ));
    }

    #[test]
    fn the_page_escapes_what_nodes_say() {
        let lease = pb::Lease {
            node: "n1".into(),
            subnet: "10.244.1.0/24".into(),
            ..Default::default()
        };
        let report = pb::NodeHealthEntry {
            node: "n1".into(),
            health: Some(pb::NodeHealth {
                problems: vec!["<script>alert(1)</script>".into()],
                interval_ms: 1000,
                ..Default::default()
            }),
            ..Default::default()
        };
        let pic = Picture::new(vec![], &[lease], std::slice::from_ref(&report));
        let page = html(&pic, &[report]);
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("&lt;script&gt;"));
    }
}
