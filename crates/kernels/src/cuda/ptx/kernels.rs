// Written by nf4_gemm.py aot (Triton 3.9.0); do not edit.
// Per config of SHIPPED (BM, BN, BK, TRANS, warps, stages[, DQ]): the kernel of each
// epilogue (plain, bias + gelu_new, bias + add).
// config 0: (128, 128, 64, 1, 8, 3)
// config 1: (128, 128, 64, 0, 8, 4)
// config 2: (256, 128, 64, 1, 8, 3)
// config 3: (128, 256, 64, 0, 8, 3)
// config 4: (128, 128, 128, 1, 8, 3)
// config 5: (64, 128, 64, 1, 4, 4)
// config 6: (128, 128, 64, 1, 8, 3, 1)
// config 7: (256, 128, 64, 1, 8, 3, 1)
// config 8: (128, 128, 64, 1, 8, 3, 2)
// config 9: (256, 128, 64, 1, 8, 3, 2)
const KERNELS: [[Kernel; 3]; 10] = [
    [
        Kernel {
            ptx: include_str!("nf4_gemm_c0_e0.ptx"),
            name: "nf4_gemm",
            tile: [128, 128, 64],
            warps: 8,
            shared: 136192,
        },
        Kernel {
            ptx: include_str!("nf4_gemm_c0_e1.ptx"),
            name: "nf4_gemm",
            tile: [128, 128, 64],
            warps: 8,
            shared: 136192,
        },
        Kernel {
            ptx: include_str!("nf4_gemm_c0_e2.ptx"),
            name: "nf4_gemm",
            tile: [128, 128, 64],
            warps: 8,
            shared: 136192,
        },
    ],
    [
        Kernel {
            ptx: include_str!("nf4_gemm_c1_e0.ptx"),
            name: "nf4_gemm",
            tile: [128, 128, 64],
            warps: 8,
            shared: 87040,
        },
        Kernel {
            ptx: include_str!("nf4_gemm_c1_e1.ptx"),
            name: "nf4_gemm",
            tile: [128, 128, 64],
            warps: 8,
            shared: 87040,
        },
        Kernel {
            ptx: include_str!("nf4_gemm_c1_e2.ptx"),
            name: "nf4_gemm",
            tile: [128, 128, 64],
            warps: 8,
            shared: 87040,
        },
    ],
    [
        Kernel {
            ptx: include_str!("nf4_gemm_c2_e0.ptx"),
            name: "nf4_gemm",
            tile: [256, 128, 64],
            warps: 8,
            shared: 168960,
        },
        Kernel {
            ptx: include_str!("nf4_gemm_c2_e1.ptx"),
            name: "nf4_gemm",
            tile: [256, 128, 64],
            warps: 8,
            shared: 168960,
        },
        Kernel {
            ptx: include_str!("nf4_gemm_c2_e2.ptx"),
            name: "nf4_gemm",
            tile: [256, 128, 64],
            warps: 8,
            shared: 168960,
        },
    ],
    [
        Kernel {
            ptx: include_str!("nf4_gemm_c3_e0.ptx"),
            name: "nf4_gemm",
            tile: [128, 256, 64],
            warps: 8,
            shared: 174080,
        },
        Kernel {
            ptx: include_str!("nf4_gemm_c3_e1.ptx"),
            name: "nf4_gemm",
            tile: [128, 256, 64],
            warps: 8,
            shared: 174080,
        },
        Kernel {
            ptx: include_str!("nf4_gemm_c3_e2.ptx"),
            name: "nf4_gemm",
            tile: [128, 256, 64],
            warps: 8,
            shared: 174080,
        },
    ],
    [
        Kernel {
            ptx: include_str!("nf4_gemm_c4_e0.ptx"),
            name: "nf4_gemm",
            tile: [128, 128, 128],
            warps: 8,
            shared: 141312,
        },
        Kernel {
            ptx: include_str!("nf4_gemm_c4_e1.ptx"),
            name: "nf4_gemm",
            tile: [128, 128, 128],
            warps: 8,
            shared: 141312,
        },
        Kernel {
            ptx: include_str!("nf4_gemm_c4_e2.ptx"),
            name: "nf4_gemm",
            tile: [128, 128, 128],
            warps: 8,
            shared: 141312,
        },
    ],
    [
        Kernel {
            ptx: include_str!("nf4_gemm_c5_e0.ptx"),
            name: "nf4_gemm",
            tile: [64, 128, 64],
            warps: 4,
            shared: 87040,
        },
        Kernel {
            ptx: include_str!("nf4_gemm_c5_e1.ptx"),
            name: "nf4_gemm",
            tile: [64, 128, 64],
            warps: 4,
            shared: 87040,
        },
        Kernel {
            ptx: include_str!("nf4_gemm_c5_e2.ptx"),
            name: "nf4_gemm",
            tile: [64, 128, 64],
            warps: 4,
            shared: 87040,
        },
    ],
    [
        Kernel {
            ptx: include_str!("nf4_gemm_c6_e0.ptx"),
            name: "nf4_gemm",
            tile: [128, 128, 64],
            warps: 8,
            shared: 75776,
        },
        Kernel {
            ptx: include_str!("nf4_gemm_c6_e1.ptx"),
            name: "nf4_gemm",
            tile: [128, 128, 64],
            warps: 8,
            shared: 75776,
        },
        Kernel {
            ptx: include_str!("nf4_gemm_c6_e2.ptx"),
            name: "nf4_gemm",
            tile: [128, 128, 64],
            warps: 8,
            shared: 75776,
        },
    ],
    [
        Kernel {
            ptx: include_str!("nf4_gemm_c7_e0.ptx"),
            name: "nf4_gemm",
            tile: [256, 128, 64],
            warps: 8,
            shared: 124928,
        },
        Kernel {
            ptx: include_str!("nf4_gemm_c7_e1.ptx"),
            name: "nf4_gemm",
            tile: [256, 128, 64],
            warps: 8,
            shared: 124928,
        },
        Kernel {
            ptx: include_str!("nf4_gemm_c7_e2.ptx"),
            name: "nf4_gemm",
            tile: [256, 128, 64],
            warps: 8,
            shared: 124928,
        },
    ],
    [
        Kernel {
            ptx: include_str!("nf4_gemm_c8_e0.ptx"),
            name: "nf4_gemm",
            tile: [128, 128, 64],
            warps: 8,
            shared: 136192,
        },
        Kernel {
            ptx: include_str!("nf4_gemm_c8_e1.ptx"),
            name: "nf4_gemm",
            tile: [128, 128, 64],
            warps: 8,
            shared: 136192,
        },
        Kernel {
            ptx: include_str!("nf4_gemm_c8_e2.ptx"),
            name: "nf4_gemm",
            tile: [128, 128, 64],
            warps: 8,
            shared: 136192,
        },
    ],
    [
        Kernel {
            ptx: include_str!("nf4_gemm_c9_e0.ptx"),
            name: "nf4_gemm",
            tile: [256, 128, 64],
            warps: 8,
            shared: 168960,
        },
        Kernel {
            ptx: include_str!("nf4_gemm_c9_e1.ptx"),
            name: "nf4_gemm",
            tile: [256, 128, 64],
            warps: 8,
            shared: 168960,
        },
        Kernel {
            ptx: include_str!("nf4_gemm_c9_e2.ptx"),
            name: "nf4_gemm",
            tile: [256, 128, 64],
            warps: 8,
            shared: 168960,
        },
    ],
];
// (config, the config of the same tiles making its weight values the plain way):
// each pair must give the same bits.
const TWINS: [(usize, usize); 4] = [(6, 0), (7, 2), (8, 0), (9, 2)];
