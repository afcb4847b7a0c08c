# 64-bit test guest for snapshots: drives the entropy device (virtio-rng) in a loop and counts.
# Sets up queue 0 (8 entries) like virtio.S, signals boot complete, then forever: posts one
# 16-byte buffer (the avail index keeps growing, wrapping the 8-entry ring), notifies, waits
# for the used index to catch up, increments a counter held both in %r12 and in RAM
# (mem+0x4000), checks they agree, prints "n=XXXXXXXX\n" (hex) and busy-waits slot_delay
# iterations. A restored copy must continue the sequence: its registers, its RAM and the
# device's ring positions all come from the snapshot. Any mismatch prints BAD and resets.
    .code64
    .globl _start
_start:
    jmp start
    .balign 8
slot_mem:   .quad 0x300000        # offset 8: where the queue, buffer and counter go
slot_mmio:  .quad 0xd0000000      # offset 16: the virtio-mmio window
slot_delay: .quad 200000          # offset 24: busy-wait iterations between lines
start:
    mov slot_mmio(%rip), %rdi
    mov slot_mem(%rip), %r8
    lea bad_id(%rip), %rsi
    cmpl $0x74726976, 0(%rdi)
    jne fail
    cmpl $4, 8(%rdi)
    jne fail
    movl $0, 0x70(%rdi)
    movl $1, 0x70(%rdi)
    movl $3, 0x70(%rdi)
    movl $1, 0x24(%rdi)
    movl $1, 0x20(%rdi)           # ack VERSION_1
    movl $0, 0x24(%rdi)
    movl $0, 0x20(%rdi)
    movl $0xb, 0x70(%rdi)         # FEATURES_OK
    lea bad_feat(%rip), %rsi
    mov 0x70(%rdi), %eax
    test $8, %eax
    jz fail
    movl $0, 0x30(%rdi)
    movl $8, 0x38(%rdi)
    mov %r8, %rax
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
    movl $1, 0x44(%rdi)
    movl $0xf, 0x70(%rdi)         # DRIVER_OK
    lea 0x3000(%r8), %rax         # descriptor 0: 16 device-writable bytes at mem+0x3000
    mov %rax, 0(%r8)
    movl $16, 8(%r8)
    movw $2, 12(%r8)
    movw $0, 14(%r8)
    movw $0, 0x1000(%r8)
    movw $0, 0x1002(%r8)
    xor %r12, %r12
    movq $0, 0x4000(%r8)
    mov $0x3f0, %dx               # boot complete
    mov $123, %al
    out %al, %dx
loop:
    movzwl 0x1002(%r8), %eax      # avail idx
    mov %eax, %ecx
    and $7, %ecx
    movw $0, 0x1004(%r8,%rcx,2)   # ring[idx % 8] = descriptor 0
    inc %eax
    movw %ax, 0x1002(%r8)
    movl $0, 0x50(%rdi)           # QueueNotify
    mov $100000000, %rcx
1:  cmpw %ax, 0x2002(%r8)         # used idx caught up?
    je 2f
    pause
    dec %rcx
    jnz 1b
    lea bad_used(%rip), %rsi
    jmp fail
2:  movl $1, 0x64(%rdi)           # InterruptACK
    inc %r12
    incq 0x4000(%r8)
    lea bad_count(%rip), %rsi
    cmp 0x4000(%r8), %r12
    jne fail
    mov $0x3f8, %dx
    mov $'n', %al
    out %al, %dx
    mov $'=', %al
    out %al, %dx
    mov $28, %cl
3:  mov %r12, %rax
    shr %cl, %rax
    and $0xf, %eax
    lea hex(%rip), %rsi
    mov (%rsi,%rax), %al
    out %al, %dx
    sub $4, %cl
    jns 3b
    mov $10, %al
    out %al, %dx
    mov slot_delay(%rip), %rcx
4:  dec %rcx
    jnz 4b
    jmp loop
fail:
    mov $0x3f8, %dx
5:  lodsb
    test %al, %al
    jz 6f
    out %al, %dx
    jmp 5b
6:  mov $0xfe, %al
    out %al, $0x64
7:  hlt
    jmp 7b
hex:       .ascii "0123456789abcdef"
bad_id:    .asciz "BAD device\n"
bad_feat:  .asciz "BAD features\n"
bad_used:  .asciz "BAD no used buffer\n"
bad_count: .asciz "BAD counter\n"
