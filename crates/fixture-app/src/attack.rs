//! What a hostile tenant tries, as endpoints, for the hostile_tenant tests: writing where it
//! should not, planting symlinks, squatting socket paths, joining the front door's port,
//! connecting to sockets it should not reach. Each answers 200 when the attempt worked.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};

fn param<'a>(query: &'a str, name: &str) -> &'a str {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or("")
}

fn result(r: std::io::Result<String>) -> (u16, Vec<u8>) {
    match r {
        Ok(s) => (200, s.into_bytes()),
        Err(e) => (500, e.to_string().into_bytes()),
    }
}

/// Handles `path` if it is an attack endpoint.
pub fn handle(path: &str, query: &str) -> Option<(u16, Vec<u8>)> {
    let target = param(query, "path");
    Some(match path {
        // Writes `kb` KiB (0: one line) to `path`.
        "/put" => {
            let kb: usize = param(query, "kb").parse().unwrap_or(0);
            let data = if kb == 0 {
                b"1\n".to_vec()
            } else {
                vec![b'x'; kb * 1024]
            };
            result(
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(target)
                    .and_then(|mut f| f.write_all(&data))
                    .map(|()| format!("wrote {} bytes", data.len())),
            )
        }
        "/symlink" => {
            let _ = std::fs::remove_file(target);
            result(std::os::unix::fs::symlink(param(query, "to"), target).map(|()| "linked".into()))
        }
        "/unlink" => result(std::fs::remove_file(target).map(|()| "removed".into())),
        // Listens at `path` and answers every request with "squatter" (as `uid`, if given:
        // the whole process takes that uid first).
        "/squat" => {
            if let Ok(uid) = param(query, "uid").parse::<libc::uid_t>() {
                // SAFETY: setgid/setuid with plain integers.
                if unsafe { libc::setgid(uid) != 0 || libc::setuid(uid) != 0 } {
                    return Some(result(Err(std::io::Error::last_os_error())));
                }
            }
            let _ = std::fs::remove_file(target);
            result(UnixListener::bind(target).map(|l| {
                std::thread::spawn(move || {
                    for mut s in l.incoming().flatten() {
                        let mut buf = [0u8; 4096];
                        let _ = s.read(&mut buf);
                        let _ = s.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\nsquatter",
                        );
                    }
                });
                "squatting".into()
            }))
        }
        "/bind6" => result(bind6(param(query, "port").parse().unwrap_or(0))),
        "/reuseport" => result(reuseport(
            param(query, "ip")
                .parse()
                .unwrap_or(std::net::Ipv4Addr::LOCALHOST),
            param(query, "port").parse().unwrap_or(0),
        )),
        // Connects to a Unix socket by path, or by abstract name (`abstract=NAME`, with
        // `nul=1` for a name that ends in a NUL byte).
        // A shim's control socket (SOCK_SEQPACKET): 200 with what it says first, if anything.
        "/connect" if param(query, "seqpacket") == "1" => result(seqpacket(target)),
        "/connect" => {
            let name = param(query, "abstract");
            let stream = if name.is_empty() {
                UnixStream::connect(target)
            } else {
                use std::os::linux::net::SocketAddrExt;
                let mut bytes = name.as_bytes().to_vec();
                if param(query, "nul") == "1" {
                    bytes.push(0);
                }
                std::os::unix::net::SocketAddr::from_abstract_name(&bytes)
                    .and_then(|a| UnixStream::connect_addr(&a))
            };
            result(stream.map(|_| "connected".into()))
        }
        _ => return None,
    })
}

/// Binds `ip`:`port` with SO_REUSEPORT (joining whoever listens there, if the kernel lets it)
/// and answers "stolen" to every connection it gets.
fn reuseport(ip: std::net::Ipv4Addr, port: u16) -> std::io::Result<String> {
    let reuse = [
        (libc::SOL_SOCKET, libc::SO_REUSEPORT),
        (libc::SOL_SOCKET, libc::SO_REUSEADDR),
    ];
    listen_stolen(ip.into(), port, &reuse).map(|()| format!("joined port {port}"))
}

/// Listens on [::]:`port` with IPV6_V6ONLY (beside an IPv4 listener on the same port) and
/// answers "stolen" to every connection it gets.
fn bind6(port: u16) -> std::io::Result<String> {
    let v6only = [(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)];
    listen_stolen(std::net::Ipv6Addr::UNSPECIFIED.into(), port, &v6only)
        .map(|()| format!("listening on [::]:{port}"))
}

/// A TCP listener on `ip`:`port` with `options` (level, name) set to 1, which std cannot
/// set before `bind`; a thread answers "stolen" to every connection.
fn listen_stolen(
    ip: std::net::IpAddr,
    port: u16,
    options: &[(libc::c_int, libc::c_int)],
) -> std::io::Result<()> {
    // SAFETY: plain socket calls on a descriptor this function owns; `addr` outlives `bind`
    // and is a zeroed sockaddr_storage filled as the family's own address structure.
    let fd = unsafe {
        let mut addr: libc::sockaddr_storage = std::mem::zeroed();
        let (family, len) = match ip {
            std::net::IpAddr::V4(v4) => {
                let a = &mut *(&mut addr as *mut _ as *mut libc::sockaddr_in);
                a.sin_family = libc::AF_INET as libc::sa_family_t;
                a.sin_port = port.to_be();
                a.sin_addr.s_addr = u32::from(v4).to_be();
                (libc::AF_INET, std::mem::size_of::<libc::sockaddr_in>())
            }
            std::net::IpAddr::V6(v6) => {
                let a = &mut *(&mut addr as *mut _ as *mut libc::sockaddr_in6);
                a.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                a.sin6_port = port.to_be();
                a.sin6_addr.s6_addr = v6.octets();
                (libc::AF_INET6, std::mem::size_of::<libc::sockaddr_in6>())
            }
        };
        let fd = libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let one: libc::c_int = 1;
        let optlen = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        for (level, name) in options {
            libc::setsockopt(fd, *level, *name, &one as *const _ as *const _, optlen);
        }
        let sa = &addr as *const _ as *const libc::sockaddr;
        if libc::bind(fd, sa, len as libc::socklen_t) != 0 || libc::listen(fd, 128) != 0 {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        fd
    };
    // SAFETY: `fd` is a listening socket this function created and hands over.
    let listener = unsafe { <std::net::TcpListener as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nstolen",
            );
        }
    });
    Ok(())
}

/// Connects a `SOCK_SEQPACKET` socket to `path` and reads one message (1 s at most).
fn seqpacket(path: &str) -> std::io::Result<String> {
    let err = std::io::Error::last_os_error;
    // SAFETY: plain socket(2)/connect(2)/recv(2) calls on a descriptor this function owns,
    // with buffers of the sizes given.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(err());
        }
        let close = |e: std::io::Error| {
            libc::close(fd);
            Err(e)
        };
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (i, b) in path.bytes().take(addr.sun_path.len() - 1).enumerate() {
            addr.sun_path[i] = b as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        if libc::connect(fd, &addr as *const _ as *const libc::sockaddr, len) != 0 {
            return close(err());
        }
        let timeout = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &timeout as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        let mut buf = [0u8; 4096];
        let n = libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0);
        if n <= 0 {
            let e = if n == 0 {
                std::io::ErrorKind::UnexpectedEof.into()
            } else {
                err()
            };
            return close(e);
        }
        libc::close(fd);
        Ok(String::from_utf8_lossy(&buf[..n as usize]).into_owned())
    }
}
