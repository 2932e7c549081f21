//! How apisync talks to PostgreSQL, below the queries.

use sqlx::{Connection, PgConnection};

/// Every open TCP socket of this process whose peer port is `port`, with
/// whether `TCP_NODELAY` is set on it.
fn sockets_to_port(port: u16) -> Vec<bool> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<libc::c_int>() else {
            continue;
        };
        // SAFETY: plain syscalls on a descriptor number with buffers of the
        // sizes given; a descriptor closed or reused meanwhile only fails.
        unsafe {
            let mut addr: libc::sockaddr_storage = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            if libc::getpeername(fd, (&raw mut addr).cast(), &mut len) != 0 {
                continue;
            }
            let peer_port = match i32::from(addr.ss_family) {
                libc::AF_INET => {
                    u16::from_be((*(&raw const addr).cast::<libc::sockaddr_in>()).sin_port)
                }
                libc::AF_INET6 => {
                    u16::from_be((*(&raw const addr).cast::<libc::sockaddr_in6>()).sin6_port)
                }
                _ => continue,
            };
            if peer_port != port {
                continue;
            }
            let mut nodelay: libc::c_int = 0;
            let mut size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            let read = libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&raw mut nodelay).cast(),
                &mut size,
            );
            if read == 0 {
                found.push(nodelay != 0);
            }
        }
    }
    found
}

/// sqlx 0.9.0 dropped `TCP_NODELAY`, and every TLS handshake then waited
/// twice for a delayed ACK (about 80 ms a connection); `vendor/sqlx-core`
/// restores it. This fails if a sqlx upgrade loses the fix again.
#[tokio::test]
async fn connections_to_postgresql_send_small_writes_at_once() {
    // Arrange: a TCP connection (the tests' DATABASE_URL is TCP).
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL is set");
    let port = url::Url::parse(&url).unwrap().port().unwrap_or(5432);

    // Act
    let conn = PgConnection::connect(&url).await.unwrap();

    // Assert: ours and any other test's connections alike.
    let sockets = sockets_to_port(port);
    assert!(!sockets.is_empty(), "no socket to port {port} found");
    assert!(
        sockets.iter().all(|&nodelay| nodelay),
        "sockets without TCP_NODELAY: {sockets:?}"
    );
    conn.close().await.unwrap();
}
