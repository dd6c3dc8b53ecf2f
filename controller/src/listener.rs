//! One port, two servers behind it. A member's Raft client opens each connection with
//! [`PEER_PREFACE`], before TLS; the listener hands those connections to a server on Raft's own
//! threads, so that a follower's AppendEntries (the commit its watchers wait for) is read,
//! handled and answered there, not queued behind the watch streams the main runtime serves.
//! Everything else goes to the main server, which serves the Raft service too: a peer of an
//! older version, which sends no preface, is still answered.
//!
//! The preface says nothing about who is calling. The Raft service checks the caller's
//! certificate on either server, and the Raft server serves nothing else.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tonic::codegen::http::Uri;

/// What a member's Raft client sends first. Its first byte is one that neither a TLS record
/// (0x16) nor HTTP/2's connection preface (`P`, with `--insecure`) starts with, so one byte
/// tells the two lanes apart.
pub const PEER_PREFACE: &[u8] = b"\0twill-raft/1\n";

/// How long a new connection may take to send its first byte, and a peer's the rest of the
/// preface, before it is dropped: a connection that says nothing holds a task, not the listener.
pub const SORT_LIMIT: Duration = Duration::from_secs(10);

/// Which server a connection goes to.
#[derive(Debug)]
pub enum Lane {
    /// Not a peer's: TLS (or HTTP/2) from its first byte, nothing read from it yet.
    Client(TcpStream),
    /// A peer's Raft connection, its preface read.
    Peer(TcpStream),
}

#[derive(Debug, thiserror::Error)]
pub enum SortError {
    #[error("closed before sending anything")]
    Closed,
    #[error("sent nothing, or not all of a peer's preface, within {0:?}")]
    Slow(Duration),
    #[error("began like a peer's preface but was not one")]
    BadPreface,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads which lane a fresh connection belongs to. A client's bytes are only peeked at, so its
/// TLS handshake starts from the first byte; a peer's preface is read off.
pub async fn sort(s: TcpStream, limit: Duration) -> Result<Lane, SortError> {
    let work = async move {
        let mut first = [0u8; 1];
        if s.peek(&mut first).await? == 0 {
            return Err(SortError::Closed);
        }
        if first[0] != PEER_PREFACE[0] {
            return Ok(Lane::Client(s));
        }
        let mut s = s;
        let mut got = [0u8; PEER_PREFACE.len()];
        s.read_exact(&mut got).await?;
        if got != PEER_PREFACE {
            return Err(SortError::BadPreface);
        }
        Ok(Lane::Peer(s))
    };
    tokio::time::timeout(limit, work)
        .await
        .unwrap_or(Err(SortError::Slow(limit)))
}

/// The two lanes' connections. Peers' come as std sockets: a tokio socket belongs to the
/// runtime that registered it, and these are registered again by the runtime that serves them.
pub struct Lanes {
    pub clients: mpsc::Receiver<TcpStream>,
    pub peers: mpsc::Receiver<std::net::TcpStream>,
}

/// Accepts on `listener` from a task of the calling runtime, sorting each connection in a task
/// of its own (with `sort_peers` false, every connection is a client's, unread, as on a member
/// of an older release); stops (and closes the listener) once the clients' lane is dropped.
pub fn split(listener: TcpListener, limit: Duration, sort_peers: bool) -> Lanes {
    let (to_clients, clients) = mpsc::channel(64);
    let (to_peers, peers) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (s, from) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors, typically: wait rather than spin.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = to_clients.closed() => break,
            };
            // Without it, a reply written after another small frame on the same connection
            // (a watch event, a Raft append) waits for the peer's delayed ACK, 40 ms.
            if let Err(e) = s.set_nodelay(true) {
                tracing::debug!(peer = %from, error = %e, "TCP_NODELAY not set");
            }
            if !sort_peers {
                if to_clients.send(s).await.is_err() {
                    break;
                }
                continue;
            }
            let (to_clients, to_peers) = (to_clients.clone(), to_peers.clone());
            tokio::spawn(async move { hand_on(s, from, limit, to_clients, to_peers).await });
        }
    });
    Lanes { clients, peers }
}

async fn hand_on(
    s: TcpStream,
    from: SocketAddr,
    limit: Duration,
    to_clients: mpsc::Sender<TcpStream>,
    to_peers: mpsc::Sender<std::net::TcpStream>,
) {
    match sort(s, limit).await {
        Ok(Lane::Client(s)) => {
            let _ = to_clients.send(s).await;
        }
        Ok(Lane::Peer(s)) => match s.into_std() {
            Ok(s) => {
                let _ = to_peers.send(s).await;
            }
            Err(e) => tracing::warn!(peer = %from, error = %e, "a peer's connection dropped"),
        },
        Err(e) => tracing::debug!(peer = %from, error = %e, "connection dropped before TLS"),
    }
}

/// Dials a member for Raft: TCP, then [`PEER_PREFACE`]; tonic puts TLS on top for `https` URLs.
#[derive(Clone, Copy, Debug, Default)]
pub struct PeerConnector;

impl tonic::codegen::Service<Uri> for PeerConnector {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(async move {
            let host = uri.host().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("no host in {uri}"))
            })?;
            // An IPv6 literal comes bracketed.
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
                Some("https") => 443,
                _ => 80,
            });
            let mut s = TcpStream::connect((host.as_str(), port)).await?;
            s.set_nodelay(true)?;
            s.write_all(PEER_PREFACE).await?;
            Ok(TokioIo::new(s))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dial = TcpStream::connect(l.local_addr().unwrap());
        let (a, b) = tokio::join!(dial, l.accept());
        (a.unwrap(), b.unwrap().0)
    }

    #[tokio::test]
    async fn a_peer_is_sorted_by_its_preface_which_is_read_off() {
        let (mut dial, acc) = pair().await;
        dial.write_all(PEER_PREFACE).await.unwrap();
        dial.write_all(b"next").await.unwrap();
        let Ok(Lane::Peer(mut s)) = sort(acc, SORT_LIMIT).await else {
            panic!("not a peer's")
        };
        let mut rest = [0u8; 4];
        s.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"next");
    }

    #[tokio::test]
    async fn a_client_is_sorted_by_its_first_byte_and_nothing_is_read_off() {
        for hello in [&[0x16u8, 0x03, 0x01][..], b"PRI * HTTP/2.0\r\n"] {
            let (mut dial, acc) = pair().await;
            dial.write_all(hello).await.unwrap();
            let Ok(Lane::Client(mut s)) = sort(acc, SORT_LIMIT).await else {
                panic!("not a client's")
            };
            let mut got = vec![0u8; hello.len()];
            s.read_exact(&mut got).await.unwrap();
            assert_eq!(got, hello);
        }
    }

    #[tokio::test]
    async fn a_false_preface_a_silent_connection_and_a_closed_one_are_refused() {
        let (mut dial, acc) = pair().await;
        dial.write_all(b"\0twill-raft/9\n").await.unwrap();
        assert!(matches!(
            sort(acc, SORT_LIMIT).await,
            Err(SortError::BadPreface)
        ));

        // Half a preface, then nothing.
        let (mut dial, acc) = pair().await;
        dial.write_all(&PEER_PREFACE[..4]).await.unwrap();
        let limit = Duration::from_millis(200);
        assert!(matches!(sort(acc, limit).await, Err(SortError::Slow(_))));
        let (_dial, acc) = pair().await;
        assert!(matches!(sort(acc, limit).await, Err(SortError::Slow(_))));

        let (dial, acc) = pair().await;
        drop(dial);
        assert!(matches!(
            sort(acc, SORT_LIMIT).await,
            Err(SortError::Closed)
        ));
    }

    /// Sorting happens beside the accept loop: connections that say nothing do not keep the
    /// next ones from being served.
    #[tokio::test]
    async fn silent_connections_do_not_hold_up_the_next_ones() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut lanes = split(l, SORT_LIMIT, true);
        let mut silent = Vec::new();
        for _ in 0..20 {
            silent.push(TcpStream::connect(addr).await.unwrap());
        }
        use tonic::codegen::Service;
        let _peer = PeerConnector
            .call(format!("http://{addr}").parse().unwrap())
            .await
            .unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(&[0x16]).await.unwrap();
        let wait = Duration::from_secs(5);
        let p = tokio::time::timeout(wait, lanes.peers.recv()).await;
        assert!(
            matches!(p, Ok(Some(_))),
            "the peer's connection was not handed on"
        );
        let c = tokio::time::timeout(wait, lanes.clients.recv()).await;
        assert!(
            matches!(c, Ok(Some(_))),
            "the client's connection was not handed on"
        );
        drop(silent);
    }

    /// Once the clients' lane is gone (the server stopped), the port is let go.
    #[tokio::test]
    async fn the_listener_closes_when_the_server_is_gone() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let lanes = split(l, SORT_LIMIT, true);
        drop(lanes);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if TcpListener::bind(addr).await.is_ok() {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{addr} still taken");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
