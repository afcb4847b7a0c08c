# 64-bit guest that prints what CPUID and RDMSR show it, then resets:
# "<leaf 1 ECX> <leaf 1 EDX> <MSR 0x1a0 (IA32_MISC_ENABLE) high:low>\n" as hex (custom CPU
# template tests: the values must be the template's).
    .code64
    .globl _start
_start:
    mov $1, %eax
    xor %ecx, %ecx
    cpuid
    mov %ecx, %r8d
    mov %edx, %r9d
    mov $0x1a0, %ecx
    rdmsr
    mov %edx, %r10d
    mov %eax, %r11d
    mov $0x3f8, %dx
    mov %r8d, %edi
    call hex32
    mov $' ', %al
    out %al, %dx
    mov %r9d, %edi
    call hex32
    mov $' ', %al
    out %al, %dx
    mov %r10d, %edi
    call hex32
    mov $':', %al
    out %al, %dx
    mov %r11d, %edi
    call hex32
    mov $'\n', %al
    out %al, %dx
    mov $0xfe, %al
    out %al, $0x64
1:  hlt
    jmp 1b
# Prints %edi as 8 hex digits to the port in %dx.
hex32:
    mov $8, %ecx
2:  rol $4, %edi
    mov %edi, %eax
    and $0xf, %eax
    cmp $10, %eax
    jb 3f
    add $('a' - 10), %eax
    jmp 4f
3:  add $'0', %eax
4:  out %al, %dx
    dec %ecx
    jnz 2b
    ret
