//! The transparent path's network device: a TUN device the agent creates
//! and configures with ioctls (the image has no `ip` binary to count on),
//! whose packets the agent reads and writes itself ([`crate::netstack`]).
//!
//! The device gets [`DEVICE_ADDRESS`] in 198.18.0.0/15 (RFC 2544's
//! benchmarking range, which no real destination uses) and the IPv4 default
//! route; IPv6 gets no route at all, so a program's IPv6 connection fails at
//! once with "network unreachable" instead of hanging. The device is not
//! persistent: closing its descriptor (when egress ends) removes it and its
//! routes.
#![allow(unsafe_code)]

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::sys::cstring;

/// The device's name.
pub const DEVICE: &str = "hearth0";
/// The guest's own address on the device (the source of every connection
/// a program makes through it).
pub const DEVICE_ADDRESS: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The DNS stub's address, written to `/etc/resolv.conf`. Any address
/// routed to the device would do: the agent answers DNS for all of them.
pub const DNS_ADDRESS: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The device's netmask: the whole /15, so fake addresses are on-link.
pub const NETMASK: Ipv4Addr = Ipv4Addr::new(255, 254, 0, 0);
/// The device's MTU, and the largest packet read from it. The largest an
/// IPv4 packet can be: the device is virtual, and the TCP stack behind it
/// (`ipstack`) pays per packet, so fewer, larger segments carry more (an
/// 8 MiB transparent download: 12-15 MiB/s at 1500, 48 at 16384, 60 at
/// 65535 in a TCG VM).
pub const MTU: u16 = 65535;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: ifreq is plain old data (arrays, integers and a union of
    // them); all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    Ok(request)
}

fn sockaddr(address: Ipv4Addr) -> libc::sockaddr {
    let inet = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(address).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes) and
    // the kernel reads an AF_INET sockaddr as a sockaddr_in.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(inet) }
}

/// Issue `request` on `fd` with `argument`.
fn ioctl<T>(fd: &OwnedFd, request: libc::c_ulong, argument: &mut T) -> io::Result<()> {
    // SAFETY: every request used here takes a pointer to the structure
    // passed (ifreq or rtentry), which lives for the call; the kernel
    // reads (and for SIOCGIF* writes) only within it.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), request as _, argument as *mut T) }).map(drop)
}

fn inet_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked
    // before being owned.
    let fd =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Create the TUN device `name` (raw IP packets, no packet-information
/// header), non-blocking. The device lives as long as the descriptor.
pub fn create(name: &str) -> io::Result<OwnedFd> {
    let path = c"/dev/net/tun";
    // SAFETY: a NUL-terminated constant path and constant flags; the
    // result is checked before being owned.
    let fd = check(unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut request = ifreq(name)?;
    request.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    ioctl(&fd, libc::TUNSETIFF as libc::c_ulong, &mut request)?;
    Ok(fd)
}

/// Give `name` `address`/`netmask` and `mtu`, and bring it up.
pub fn configure(name: &str, address: Ipv4Addr, netmask: Ipv4Addr, mtu: u16) -> io::Result<()> {
    let socket = inet_socket()?;
    let mut request = ifreq(name)?;
    request.ifr_ifru.ifru_addr = sockaddr(address);
    ioctl(&socket, libc::SIOCSIFADDR, &mut request)?;
    let mut request = ifreq(name)?;
    request.ifr_ifru.ifru_netmask = sockaddr(netmask);
    ioctl(&socket, libc::SIOCSIFNETMASK, &mut request)?;
    let mut request = ifreq(name)?;
    request.ifr_ifru.ifru_mtu = mtu.into();
    ioctl(&socket, libc::SIOCSIFMTU, &mut request)?;
    let mut request = ifreq(name)?;
    ioctl(&socket, libc::SIOCGIFFLAGS, &mut request)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { request.ifr_ifru.ifru_flags };
    request.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    ioctl(&socket, libc::SIOCSIFFLAGS, &mut request)
}

/// Make `name` the IPv4 default route (a device route: a TUN device has no
/// link layer, so no gateway is needed).
pub fn add_default_route(name: &str) -> io::Result<()> {
    let socket = inet_socket()?;
    let device = cstring(name)?;
    // SAFETY: rtentry is plain old data (integers, sockaddrs and pointers,
    // null being valid for each); all zeroes is a valid value.
    let mut route: libc::rtentry = unsafe { std::mem::zeroed() };
    route.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
    route.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
    route.rt_flags = libc::RTF_UP;
    route.rt_dev = device.as_ptr().cast_mut();
    // `device` outlives the call that reads rt_dev.
    ioctl(&socket, libc::SIOCADDRT, &mut route)
}

/// A TUN descriptor as an async packet device: each read returns one
/// packet, each write sends one.
#[derive(Debug)]
pub struct TunDevice {
    fd: AsyncFd<OwnedFd>,
}

impl TunDevice {
    /// Wrap a non-blocking TUN descriptor; needs a tokio runtime.
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        // SAFETY: an OwnedFd is open until dropped, its descriptor never
        // changes, and the AsyncFd owns it (nothing else can close it).
        let fd = unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)?;
        Ok(Self { fd })
    }

    /// Send one packet now, without waiting: a TUN write does not block in
    /// practice, and a packet that cannot be written is dropped, like any
    /// packet lost on a link (the sender's TCP retransmits).
    pub fn send_now(&self, packet: &[u8]) -> io::Result<usize> {
        write(self.fd.get_ref(), packet)
    }

    /// Read one packet into `buf`.
    pub fn poll_recv(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            match guard.try_io(|fd| read(fd.get_ref(), buf)) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    /// Write one packet from `buf`.
    pub fn poll_send(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| write(fd.get_ref(), buf)) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }
}

fn read(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for writes of buf.len() bytes for the call.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn write(fd: &OwnedFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for reads of buf.len() bytes for the call.
    let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

impl AsyncRead for TunDevice {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = ready!(self.poll_recv(cx, buf.initialize_unfilled()))?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for TunDevice {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_send(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
