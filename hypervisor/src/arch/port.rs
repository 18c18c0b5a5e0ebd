//! Port I/O (SDM Vol. 1 19, IN/OUT): the kernel's only path to I/O ports. The port's width is
//! the value's type (`u8`, `u16` or `u32`).

pub use x86_64::structures::port::{PortRead, PortWrite};

/// Reads `port`.
///
/// # Safety
/// CPL 0, and reading `port` at this width must have no effect the caller has not accounted for
/// (a read can pop a FIFO or acknowledge a device).
#[inline]
pub unsafe fn read<T: PortRead>(port: u16) -> T {
    // SAFETY: the caller's contract; IN touches no memory.
    unsafe { T::read_from_port(port) }
}

/// Writes `value` to `port`.
///
/// # Safety
/// CPL 0, and `port` must be a register the caller owns, at this width, whose effect it intends.
#[inline]
pub unsafe fn write<T: PortWrite>(port: u16, value: T) {
    // SAFETY: the caller's contract; OUT touches no memory.
    unsafe { T::write_to_port(port, value) }
}
