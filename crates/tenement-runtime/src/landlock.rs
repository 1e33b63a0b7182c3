//! Landlock scoping for `namespace` apps (landlock(7); ABI 6, Linux 6.12+): the app may not
//! connect to abstract Unix sockets, nor signal processes, outside its own Landlock domain.
//!
//! Why: abstract Unix sockets belong to a network namespace, not to the filesystem, so a
//! `namespace` app (which shares the host's network namespace) could otherwise reach every
//! abstract socket on the host, whatever its mount walls: runsc's control socket with
//! `network = "host"`, a desktop's D-Bus, a containerd shim's. Its own children (same domain)
//! still talk to each other. On an older kernel this is skipped (the rest of the walls stand).

/// `struct landlock_ruleset_attr` (uapi/linux/landlock.h).
#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

const SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1 << 0;
const SCOPE_SIGNAL: u64 = 1 << 1;
const CREATE_RULESET_VERSION: libc::c_uint = 1 << 0;
/// The first ABI with scopes.
const SCOPED_ABI: libc::c_long = 6;

/// Restricts this (single-threaded, `no_new_privs`) process and its future children; `false`
/// when the kernel has no Landlock scoping.
pub fn scope_to_self() -> Result<bool, String> {
    // SAFETY: landlock_create_ruleset(NULL, 0, VERSION) only returns the ABI version.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    };
    if abi < SCOPED_ABI {
        return Ok(false);
    }
    let attr = RulesetAttr {
        handled_access_fs: 0,
        handled_access_net: 0,
        scoped: SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL,
    };
    // SAFETY: `attr` is a valid, correctly sized ruleset attribute that outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr as *const RulesetAttr,
            std::mem::size_of::<RulesetAttr>(),
            0,
        )
    };
    if fd < 0 {
        return Err(format!(
            "landlock_create_ruleset: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `fd` is the ruleset descriptor just created; closed right after.
    let restricted = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, fd, 0) };
    let err = std::io::Error::last_os_error();
    // SAFETY: closing the descriptor this function owns.
    unsafe { libc::close(fd as libc::c_int) };
    if restricted != 0 {
        return Err(format!("landlock_restrict_self: {err}"));
    }
    Ok(true)
}
