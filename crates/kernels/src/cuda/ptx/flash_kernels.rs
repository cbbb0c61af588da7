// Written by flash_attn.py aot (Triton 3.9.0); do not edit.
// Per (head dim, config (BM, BN, warps, stages)): the kernel without and with a
// mask. Configs of one head dim are consecutive, config 0 first.
const FLASH_KERNELS: [(usize, [Kernel; 2]); 9] = [
    // head dim 64, config 0: (64, 64, 4, 3)
    (64, [
        Kernel {
            ptx: include_str!("flash_attn_d64_m0_c0.ptx"),
            name: "flash_attn",
            tile: [64, 64, 64],
            warps: 4,
            shared: 57344,
        },
        Kernel {
            ptx: include_str!("flash_attn_d64_m1_c0.ptx"),
            name: "flash_attn",
            tile: [64, 64, 64],
            warps: 4,
            shared: 65536,
        },
    ]),
    // head dim 64, config 1: (128, 64, 8, 3)
    (64, [
        Kernel {
            ptx: include_str!("flash_attn_d64_m0_c1.ptx"),
            name: "flash_attn",
            tile: [128, 64, 64],
            warps: 8,
            shared: 65536,
        },
        Kernel {
            ptx: include_str!("flash_attn_d64_m1_c1.ptx"),
            name: "flash_attn",
            tile: [128, 64, 64],
            warps: 8,
            shared: 81920,
        },
    ]),
    // head dim 64, config 2: (64, 64, 4, 4)
    (64, [
        Kernel {
            ptx: include_str!("flash_attn_d64_m0_c2.ptx"),
            name: "flash_attn",
            tile: [64, 64, 64],
            warps: 4,
            shared: 73728,
        },
        Kernel {
            ptx: include_str!("flash_attn_d64_m1_c2.ptx"),
            name: "flash_attn",
            tile: [64, 64, 64],
            warps: 4,
            shared: 81920,
        },
    ]),
    // head dim 128, config 0: (64, 64, 8, 3)
    (128, [
        Kernel {
            ptx: include_str!("flash_attn_d128_m0_c0.ptx"),
            name: "flash_attn",
            tile: [64, 64, 128],
            warps: 8,
            shared: 114688,
        },
        Kernel {
            ptx: include_str!("flash_attn_d128_m1_c0.ptx"),
            name: "flash_attn",
            tile: [64, 64, 128],
            warps: 8,
            shared: 131072,
        },
    ]),
    // head dim 128, config 1: (64, 32, 4, 3)
    (128, [
        Kernel {
            ptx: include_str!("flash_attn_d128_m0_c1.ptx"),
            name: "flash_attn",
            tile: [64, 32, 128],
            warps: 4,
            shared: 65536,
        },
        Kernel {
            ptx: include_str!("flash_attn_d128_m1_c1.ptx"),
            name: "flash_attn",
            tile: [64, 32, 128],
            warps: 4,
            shared: 73728,
        },
    ]),
    // head dim 128, config 2: (128, 32, 8, 3)
    (128, [
        Kernel {
            ptx: include_str!("flash_attn_d128_m0_c2.ptx"),
            name: "flash_attn",
            tile: [128, 32, 128],
            warps: 8,
            shared: 81920,
        },
        Kernel {
            ptx: include_str!("flash_attn_d128_m1_c2.ptx"),
            name: "flash_attn",
            tile: [128, 32, 128],
            warps: 8,
            shared: 98304,
        },
    ]),
    // head dim 256, config 0: (64, 32, 8, 2)
    (256, [
        Kernel {
            ptx: include_str!("flash_attn_d256_m0_c0.ptx"),
            name: "flash_attn",
            tile: [64, 32, 256],
            warps: 8,
            shared: 98304,
        },
        Kernel {
            ptx: include_str!("flash_attn_d256_m1_c0.ptx"),
            name: "flash_attn",
            tile: [64, 32, 256],
            warps: 8,
            shared: 106496,
        },
    ]),
    // head dim 256, config 1: (64, 64, 8, 2)
    (256, [
        Kernel {
            ptx: include_str!("flash_attn_d256_m0_c1.ptx"),
            name: "flash_attn",
            tile: [64, 64, 256],
            warps: 8,
            shared: 163840,
        },
        Kernel {
            ptx: include_str!("flash_attn_d256_m1_c1.ptx"),
            name: "flash_attn",
            tile: [64, 64, 256],
            warps: 8,
            shared: 180224,
        },
    ]),
    // head dim 256, config 2: (128, 32, 8, 2)
    (256, [
        Kernel {
            ptx: include_str!("flash_attn_d256_m0_c2.ptx"),
            name: "flash_attn",
            tile: [128, 32, 256],
            warps: 8,
            shared: 131072,
        },
        Kernel {
            ptx: include_str!("flash_attn_d256_m1_c2.ptx"),
            name: "flash_attn",
            tile: [128, 32, 256],
            warps: 8,
            shared: 147456,
        },
    ]),
];
