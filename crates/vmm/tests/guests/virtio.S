# 64-bit test guest: a minimal virtio-mmio driver for the entropy device (virtio-rng) at
# slot_mmio. Negotiates VERSION_1, sets up queue 0 (8 entries) in guest RAM, submits one
# 16-byte device-writable buffer, notifies (QueueNotify: a KVM ioeventfd), then polls the used
# ring until the device (on the VMM's event loop) returned the buffer, checks the used length,
# the buffer contents and InterruptStatus (raised through the irqfd), and resets.
# Same slots and entry as long64.S.
    .code64
    .globl _start
_start:
    jmp start
    .balign 8
slot_mem:   .quad 0x300000        # offset 8: where the queue and buffer go
slot_mmio:  .quad 0xd0000000      # offset 16: the virtio-mmio window
start:
    mov slot_mmio(%rip), %rdi
    mov slot_mem(%rip), %r8
    lea bad_id(%rip), %rsi
    cmpl $0x74726976, 0(%rdi)     # magic "virt"
    jne fail
    cmpl $2, 4(%rdi)              # version 2 (modern)
    jne fail
    cmpl $4, 8(%rdi)              # device id 4 (entropy)
    jne fail
    lea id_ok(%rip), %rsi
    call print
    mov slot_mmio(%rip), %rdi
    movl $0, 0x70(%rdi)           # reset
    movl $1, 0x70(%rdi)           # ACKNOWLEDGE
    movl $3, 0x70(%rdi)           # DRIVER
    movl $1, 0x14(%rdi)           # DeviceFeaturesSel = 1
    mov 0x10(%rdi), %eax
    lea bad_feat(%rip), %rsi
    test $1, %eax                 # VIRTIO_F_VERSION_1 (bit 32)
    jz fail
    movl $1, 0x24(%rdi)           # DriverFeaturesSel = 1
    movl $1, 0x20(%rdi)           # ack VERSION_1
    movl $0, 0x24(%rdi)
    movl $0, 0x20(%rdi)
    movl $0xb, 0x70(%rdi)         # FEATURES_OK
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
    # Descriptor 0: buffer at mem+0x3000, 16 bytes, device-writable.
    lea 0x3000(%r8), %rax
    movq $0, (%rax)
    movq $0, 8(%rax)
    mov %rax, 0(%r8)
    movl $16, 8(%r8)
    movw $2, 12(%r8)
    movw $0, 14(%r8)
    # Available ring: flags 0, ring[0] = 0, then idx = 1.
    movw $0, 0x1000(%r8)
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
    cmpl $16, 0x2008(%r8)         # used[0].len
    jne fail
    lea bad_data(%rip), %rsi
    mov 0x3000(%r8), %rax
    or 0x3008(%r8), %rax
    jz fail
    lea bad_irq(%rip), %rsi
    mov 0x60(%rdi), %eax          # InterruptStatus: used-ring bit
    test $1, %eax
    jz fail
    movl $1, 0x64(%rdi)           # InterruptACK
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
id_ok:    .asciz "virtio-mmio v2 entropy device\n"
bad_id:   .asciz "BAD magic/version/id\n"
bad_feat: .asciz "BAD features\n"
bad_used: .asciz "BAD no used buffer\n"
bad_len:  .asciz "BAD used entry\n"
bad_data: .asciz "BAD buffer still zero\n"
bad_irq:  .asciz "BAD interrupt status\n"
ok:       .asciz "VIRTIO RNG OK\n"
