//! ELF64 images for the loader and the hypervisor: validation and the PT_LOAD layout.
//! (Implemented by the loader work; see boot/.)
