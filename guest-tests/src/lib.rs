//! Guest test kernels (issue: VT-x guests and ELI).
#![no_std]
