//! Runs repdiff-engine's CUDA C kernels (backend/engine/cuda) on the host: each CUDA thread a fiber on the
//! calling thread, block by block, with the GPU's barriers, warp shuffles, shared memory, bf16 rounding and
//! WMMA tile products emulated (see `cuda/emulate.h`). The engine's tests launch the kernels through [`Launch`] with the
//! geometry the CUDA ops use and compare them with the CPU ops; speed is not emulated.

use std::ffi::{CString, c_char, c_void};

unsafe extern "C" {
    fn repdiff_emulate(
        name: *const c_char,
        grid: *const u32,
        block: *const u32,
        shared: u32,
        args: *mut *mut c_void,
        error: *mut c_char,
        error_len: usize,
    ) -> i32;
}

/// One kernel launch: its arguments in the kernel's order, as `cuLaunchKernel` takes them.
pub struct Launch {
    kernel: String,
    /// Each argument's value in an 8-byte slot of its own (kernel arguments here are pointers, 64-bit
    /// sizes, 32-bit ints and floats; a 4-byte value sits in the slot's first bytes, as on a little-endian
    /// host). Their addresses are taken in `run`, once no slot moves any more.
    slots: Vec<u64>,
}

impl Launch {
    pub fn new(kernel: &str) -> Self {
        Launch { kernel: kernel.to_string(), slots: Vec::new() }
    }

    fn push(mut self, bits: u64) -> Self {
        self.slots.push(bits);
        self
    }

    /// A read-only buffer.
    pub fn input<T>(self, values: &[T]) -> Self {
        let address = values.as_ptr() as u64;
        self.push(address)
    }

    /// A buffer the kernel writes.
    pub fn output<T>(self, values: &mut [T]) -> Self {
        let address = values.as_mut_ptr() as u64;
        self.push(address)
    }

    /// A null pointer (an optional buffer left out).
    pub fn null(self) -> Self {
        self.push(0)
    }

    pub fn size(self, value: usize) -> Self {
        self.push(value as u64)
    }

    pub fn int(self, value: i32) -> Self {
        self.push(u64::from(value as u32))
    }

    pub fn float(self, value: f32) -> Self {
        self.push(u64::from(value.to_bits()))
    }

    /// Runs the kernel over `grid` blocks of `block` threads with `shared` bytes of dynamic shared memory.
    /// The buffers passed in must outlive this call and be as large as the kernel expects.
    pub fn run(mut self, grid: (u32, u32, u32), block: (u32, u32, u32), shared: u32) -> Result<(), String> {
        let name = CString::new(self.kernel.clone()).map_err(|e| e.to_string())?;
        let mut args: Vec<*mut c_void> = self.slots.iter_mut().map(|slot| slot as *mut u64 as *mut c_void).collect();
        let (grid, block) = ([grid.0, grid.1, grid.2], [block.0, block.1, block.2]);
        let mut error = vec![0u8; 512];
        // SAFETY: the kernel reads as many arguments as it declares (the caller passes them in its order),
        // each slot lives until the call returns, and the buffers' addresses are the caller's to keep valid.
        let status = unsafe {
            repdiff_emulate(
                name.as_ptr(),
                grid.as_ptr(),
                block.as_ptr(),
                shared,
                args.as_mut_ptr(),
                error.as_mut_ptr() as *mut c_char,
                error.len(),
            )
        };
        if status == 0 {
            return Ok(());
        }
        let end = error.iter().position(|&b| b == 0).unwrap_or(error.len());
        Err(String::from_utf8_lossy(&error[..end]).into_owned())
    }
}
