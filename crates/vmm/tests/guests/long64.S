# 64-bit test guest, entered in long mode by the Linux 64-bit boot protocol
# (%rsi = zero page, identity-mapped page tables, %rsp = 0x8ff0).
# Position independent: loaded at 1 MiB as an ELF, or at 1 MiB + 0x200 inside a bzImage.
# The host patches the two slots before writing the image.
    .code64
    .globl _start
_start:
    jmp start
    .balign 8
slot_mem:   .quad 0x200000        # offset 8: RAM address to test (host patches)
slot_mmio:  .quad 0xd0000000      # offset 16: MMIO address of the test device
start:
    mov %rsi, %r12
    lea hello(%rip), %rsi
    call print
    # The zero page must carry the setup-header magic "HdrS" at 0x202.
    cmpl $0x53726448, 0x202(%r12)
    lea zp_bad(%rip), %rsi
    jne fail
    lea zp_ok(%rip), %rsi
    call print
    # RAM: an aligned qword at slot_mem and an unaligned one across the next page boundary.
    mov slot_mem(%rip), %rdi
    movabs $0x1122334455667788, %rax
    mov %rax, (%rdi)
    not %rax
    mov %rax, 0xffc(%rdi)
    mov (%rdi), %rbx
    mov 0xffc(%rdi), %rcx
    movabs $0x1122334455667788, %rdx
    cmp %rdx, %rbx
    lea mem_bad(%rip), %rsi
    jne fail
    not %rdx
    cmp %rdx, %rcx
    jne fail
    lea mem_ok(%rip), %rsi
    call print
    # MMIO: write a dword at +0, read a dword at +4 (the test device answers 0x600dd00d).
    mov slot_mmio(%rip), %rdi
    movl $0xcafef00d, (%rdi)
    movl 4(%rdi), %eax
    cmp $0x600dd00d, %eax
    lea mmio_bad(%rip), %rsi
    jne fail
    lea mmio_ok(%rip), %rsi
    call print
    # Port I/O: out 0x42 to port 0x510, in from port 0x511 (the test device answers 0x99).
    mov $0x510, %dx
    mov $0x42, %al
    out %al, %dx
    inc %dx
    in %dx, %al
    cmp $0x99, %al
    lea pio_bad(%rip), %rsi
    jne fail
    lea pio_ok(%rip), %rsi
    call print
    # Boot complete (Firecracker's boot timer: 123 to port 0x3f0).
    mov $0x3f0, %dx
    mov $123, %al
    out %al, %dx
    lea done(%rip), %rsi
    call print
reset:
    mov $0xfe, %al
    out %al, $0x64
1:  hlt
    jmp 1b
fail:
    call print
    jmp reset
print:
    mov $0x3f8, %dx
1:  lodsb
    test %al, %al
    jz 2f
    out %al, %dx
    jmp 1b
2:  ret
hello:    .asciz "hello from long mode\n"
zp_ok:    .asciz "zero page OK\n"
zp_bad:   .asciz "zero page BAD\n"
mem_ok:   .asciz "MEM OK\n"
mem_bad:  .asciz "MEM BAD\n"
mmio_ok:  .asciz "MMIO OK\n"
mmio_bad: .asciz "MMIO BAD\n"
pio_ok:   .asciz "PIO OK\n"
pio_bad:  .asciz "PIO BAD\n"
done:     .asciz "done\n"
