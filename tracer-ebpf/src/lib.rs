//! Host-side placeholder: the kernel programs are the `tracer-ebpf` binary, built for
//! `bpfel-unknown-none` by `tracer/build.rs`.
#![no_std]
