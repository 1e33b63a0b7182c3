//! What one request's store holds, and the interfaces a component may import.

use std::net::{IpAddr, SocketAddr};

use wasmtime::Engine;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

pub struct State {
    pub wasi: WasiCtx,
    pub http: WasiHttpCtx,
    pub table: ResourceTable,
    pub limits: crate::host::Limits,
    pub hooks: Outbound,
    /// Epoch ticks this request has been seen running ([`crate::host`]).
    pub ticks: u64,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for State {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Every interface tenement gives a component: `wasi:http` and the WASI 0.2 interfaces
/// (`cli`, `clocks`, `random`, `io`, `filesystem`, `sockets`; what each may reach is decided
/// per request in [`crate::host`]).
pub fn linker(engine: &Engine) -> wasmtime::Result<Linker<State>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    Ok(linker)
}

/// Outbound `wasi:http` requests: refused unless the service allows outbound traffic, and
/// never to this host's own addresses (the admin API, other tenants' TCP ports).
pub struct Outbound {
    pub allowed: bool,
}

impl WasiHttpHooks for Outbound {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<wasmtime_wasi_http::WasiBody>,
                        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        use wasmtime_wasi_http::Error;
        let allowed = self.allowed;
        Box::new(async move {
            drop(fut);
            if !allowed {
                return Err(Error::HttpRequestDenied);
            }
            let authority = request
                .uri()
                .authority()
                .ok_or(Error::HttpRequestUriInvalid)?;
            let port = authority.port_u16().unwrap_or(
                match request.uri().scheme() == Some(&http::uri::Scheme::HTTPS) {
                    true => 443,
                    false => 80,
                },
            );
            let host = authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']');
            let addrs = tokio::net::lookup_host((host, port))
                .await
                .map_err(|_| Error::DestinationNotFound)?;
            for addr in addrs {
                if !public(addr) {
                    return Err(Error::DestinationIpProhibited);
                }
            }
            let (res, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                res.map(http_body_util::BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

/// Whether a component may reach `addr`: not one of this host's own addresses (whatever the
/// interface: its services listen there too, and traffic to them never leaves the host), nor
/// loopback, unspecified, link-local (cloud metadata) or multicast.
pub fn public(addr: SocketAddr) -> bool {
    let ip = unmapped(addr.ip());
    kind_is_public(ip) && !own_addresses().contains(&ip)
}

fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// This host's addresses, read now (interfaces come and go).
fn own_addresses() -> Vec<IpAddr> {
    let Ok(found) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    found
        .filter_map(|i| {
            let a = i.address?;
            a.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        })
        .map(unmapped)
        .collect()
}

fn kind_is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_loopback()
                || v4.is_unspecified()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast())
        }
        IpAddr::V6(v6) => {
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || v6.is_unicast_link_local())
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn own_host_addresses_are_not_public() {
        for a in [
            "127.0.0.1:80",
            "[::1]:80",
            "0.0.0.0:1",
            "[::ffff:127.0.0.1]:8080",
            "169.254.169.254:80",
        ] {
            assert!(!super::public(a.parse().unwrap()), "{a}");
        }
        for a in ["93.184.216.34:443", "10.1.2.3:80", "[2606:4700::1]:443"] {
            assert!(super::public(a.parse().unwrap()), "{a}");
        }
        // Every address of this host's own interfaces, whatever its kind.
        for ip in super::own_addresses() {
            assert!(!super::public(std::net::SocketAddr::new(ip, 80)), "{ip}");
        }
    }
}
