# 64-bit test guest: a minimal virtio-pmem driver for the device at slot_mmio. Reads the
# region's start and size from the config space, maps its first 2 MiB (a page directory of its
# own hooked into the VMM's identity map: the region is above 4 GiB), checks the marker the
# host wrote at offset 0, stores the marker inverted at offset 4096 and reports whether the
# store stuck (not for a read-only slot), then sends one FLUSH request (queue 0, 8 entries in
# guest RAM) and checks the device answered ret = 0 with used length 4. Prints the results on
# COM1, writes the boot-complete port and resets. Same entry as long64.S.
    .code64
    .globl _start
_start:
    jmp start
    .balign 8
slot_mem:    .quad 0x300000       # offset 8: queue, request, response and page directory
slot_mmio:   .quad 0xd0000000     # offset 16: the pmem device's virtio-mmio window
slot_marker: .quad 0              # offset 24: the qword the host wrote at offset 0
start:
    mov slot_mmio(%rip), %rdi
    mov slot_mem(%rip), %r8
    lea bad_id(%rip), %rsi
    cmpl $0x74726976, 0(%rdi)     # magic "virt"
    jne fail
    cmpl $2, 4(%rdi)              # version 2 (modern)
    jne fail
    cmpl $27, 8(%rdi)             # device id 27 (pmem)
    jne fail
    # Config space: start (r12) and size (r13), each two 32-bit reads.
    mov 0x104(%rdi), %eax
    shl $32, %rax
    mov 0x100(%rdi), %ecx
    or %rcx, %rax
    mov %rax, %r12
    mov 0x10c(%rdi), %eax
    shl $32, %rax
    mov 0x108(%rdi), %ecx
    or %rcx, %rax
    mov %rax, %r13
    lea bad_cfg(%rip), %rsi
    cmp $0x200000, %r13           # at least 2 MiB
    jb fail
    test $0x1fffff, %r12          # 2 MiB aligned
    jnz fail
    mov %r12, %rax
    shr $39, %rax                 # below 512 GiB: PML4 entry 0, the VMM's PDPT at 0xa000
    jnz fail
    lea cfg_ok(%rip), %rsi
    call print
    # A page directory at mem+0x4000 with one 2 MiB entry for [start, start + 2 MiB),
    # hooked into PDPT entry start >> 30 (unused: the identity map ends below the region).
    lea 0x4000(%r8), %rbx
    mov %rbx, %rdx
    mov $512, %ecx
1:  movq $0, (%rdx)
    add $8, %rdx
    dec %ecx
    jnz 1b
    mov %r12, %rax
    shr $21, %rax
    and $511, %rax
    mov %r12, %rdx
    or $0x83, %rdx                # present, writable, 2 MiB page
    mov %rdx, (%rbx,%rax,8)
    mov %r12, %rax
    shr $30, %rax
    lea 3(%rbx), %rcx             # the page directory, present, writable
    mov $0xa000, %rdx
    mov %rcx, (%rdx,%rax,8)
    mov %cr3, %rax
    mov %rax, %cr3                # flush the TLB
    # The host's marker at offset 0.
    lea bad_marker(%rip), %rsi
    mov (%r12), %rax
    cmp slot_marker(%rip), %rax
    jne fail
    lea read_ok(%rip), %rsi
    call print
    # Our store at offset 4096: the marker inverted.
    mov slot_marker(%rip), %rax
    not %rax
    mov %rax, 4096(%r12)
    lea kept(%rip), %rsi
    cmp 4096(%r12), %rax
    je 2f
    lea dropped(%rip), %rsi
2:  call print
    # virtio: reset, ACKNOWLEDGE, DRIVER, VERSION_1 only, FEATURES_OK.
    mov slot_mmio(%rip), %rdi
    movl $0, 0x70(%rdi)
    movl $1, 0x70(%rdi)
    movl $3, 0x70(%rdi)
    movl $1, 0x14(%rdi)           # DeviceFeaturesSel = 1
    mov 0x10(%rdi), %eax
    lea bad_feat(%rip), %rsi
    test $1, %eax                 # VIRTIO_F_VERSION_1 (bit 32)
    jz fail
    movl $1, 0x24(%rdi)
    movl $1, 0x20(%rdi)
    movl $0, 0x24(%rdi)
    movl $0, 0x20(%rdi)
    movl $0xb, 0x70(%rdi)
    mov 0x70(%rdi), %eax
    test $8, %eax
    jz fail
    movl $0, 0x30(%rdi)           # QueueSel 0
    movl $8, 0x38(%rdi)           # QueueNum 8
    mov %r8, %rax                 # desc table at mem, avail at +0x1000, used at +0x2000
    mov %eax, 0x80(%rdi)
    shr $32, %rax
    mov %eax, 0x84(%rdi)
    lea 0x1000(%r8), %rax
    mov %eax, 0x90(%rdi)
    shr $32, %rax
    mov %eax, 0x94(%rdi)
    lea 0x2000(%r8), %rax
    mov %eax, 0xa0(%rdi)
    shr $32, %rax
    mov %eax, 0xa4(%rdi)
    movl $1, 0x44(%rdi)           # QueueReady
    movl $0xf, 0x70(%rdi)         # DRIVER_OK
    # Request {type = 0 (FLUSH)} at mem+0x3000, response {ret} at mem+0x3010 (preset to -1).
    movl $0, 0x3000(%r8)
    movl $0xffffffff, 0x3010(%r8)
    lea 0x3000(%r8), %rax         # descriptor 0: the request, readable, NEXT -> 1
    mov %rax, 0(%r8)
    movl $4, 8(%r8)
    movw $1, 12(%r8)
    movw $1, 14(%r8)
    lea 0x3010(%r8), %rax         # descriptor 1: the response, device-writable
    mov %rax, 16(%r8)
    movl $4, 24(%r8)
    movw $2, 28(%r8)
    movw $0, 30(%r8)
    movw $0, 0x1000(%r8)          # available ring: flags 0, ring[0] = 0, then idx = 1
    movw $0, 0x1004(%r8)
    movw $1, 0x1002(%r8)
    movl $0, 0x50(%rdi)           # QueueNotify (queue 0)
    mov $100000000, %rcx
1:  cmpw $1, 0x2002(%r8)          # used idx
    je 2f
    pause
    dec %rcx
    jnz 1b
    lea bad_used(%rip), %rsi
    jmp fail
2:  lea bad_len(%rip), %rsi
    cmpl $0, 0x2004(%r8)          # used[0].id
    jne fail
    cmpl $4, 0x2008(%r8)          # used[0].len
    jne fail
    lea bad_ret(%rip), %rsi
    cmpl $0, 0x3010(%r8)          # ret = 0: the file was synced
    jne fail
    lea ok(%rip), %rsi
    call print
    mov $0x3f0, %dx               # boot complete
    mov $123, %al
    out %al, %dx
reset:
    mov $0xfe, %al
    out %al, $0x64
3:  hlt
    jmp 3b
fail:
    call print
    jmp reset
print:
    push %rdx
    mov $0x3f8, %dx
1:  lodsb
    test %al, %al
    jz 2f
    out %al, %dx
    jmp 1b
2:  pop %rdx
    ret
bad_id:     .asciz "BAD magic/version/id\n"
bad_cfg:    .asciz "BAD config space\n"
cfg_ok:     .asciz "virtio-pmem config ok\n"
bad_marker: .asciz "BAD marker at offset 0\n"
read_ok:    .asciz "pmem read ok\n"
kept:       .asciz "pmem write kept\n"
dropped:    .asciz "pmem write dropped\n"
bad_feat:   .asciz "BAD features\n"
bad_used:   .asciz "BAD no used buffer\n"
bad_len:    .asciz "BAD used entry\n"
bad_ret:    .asciz "BAD flush status\n"
ok:         .asciz "PMEM FLUSH OK\n"
