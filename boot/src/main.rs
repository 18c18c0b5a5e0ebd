//! Exitless UEFI loader.
#![no_std]
#![no_main]
