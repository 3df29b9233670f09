//! Netlink plumbing shared by every reader of kernel state over netlink sockets.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_packet_core::NetlinkBuffer;
use netlink_sys::Socket;

/// The netlink messages in one datagram; stops at the first malformed length.
pub(crate) fn split_messages(mut datagram: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        // new_checked verifies the length field covers a header and fits in the datagram.
        let len = NetlinkBuffer::new_checked(datagram).ok()?.length() as usize;
        let message = datagram.get(..len)?;
        // Messages are padded to 4 bytes (NLMSG_ALIGN).
        let next = len.checked_add(3)? & !3;
        datagram = datagram.get(next..).unwrap_or(&[]);
        Some(message)
    })
}

/// Makes a blocking receive give up (WouldBlock) after `timeout`: a kernel that never answers
/// must not hang a reader.
pub(crate) fn set_receive_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: the fd is open for the lifetime of `socket`, and the pointer and length describe
    // the timeval above, which outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_messages_stops_at_garbage() {
        // Two 18-byte messages (2 payload bytes), the first padded to 20 as the kernel does.
        let mut two = Vec::new();
        for sequence in [1u32, 2] {
            two.extend_from_slice(&18u32.to_ne_bytes());
            two.extend_from_slice(&3u16.to_ne_bytes()); // NLMSG_DONE
            two.extend_from_slice(&0u16.to_ne_bytes());
            two.extend_from_slice(&sequence.to_ne_bytes());
            two.extend_from_slice(&0u32.to_ne_bytes());
            two.extend_from_slice(&[0; 2]);
            if sequence == 1 {
                two.extend_from_slice(&[0; 2]);
            }
        }
        let lens: Vec<usize> = split_messages(&two).map(<[u8]>::len).collect();
        assert_eq!(lens, [18, 18]);
        assert_eq!(split_messages(&two[..30]).count(), 1);
        assert_eq!(split_messages(&[0xff; 40]).count(), 0);
        assert_eq!(split_messages(&[]).count(), 0);
    }
}
