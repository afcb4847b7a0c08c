# 32-bit PVH test guest: entered in flat protected mode, paging off, %ebx = hvm_start_info.
# Linked at 1 MiB. Prints "PVH OK", the command line from start_info, the number of memory
# map entries, the initrd (module 0) as a string if there is one, signals boot complete and
# resets through the i8042.
    .code32
    .globl _start
_start:
    mov $0x8ff0, %esp
    cmpl $0x336ec578, (%ebx)          # XEN_HVM_START_MAGIC_VALUE
    jne bad
    mov $ok, %esi
    call print
    mov 24(%ebx), %esi                # cmdline_paddr (low half)
    call print
    mov $nl, %esi
    call print
    mov 48(%ebx), %eax                # memmap_entries
    add $'0', %al
    mov $0x3f8, %dx
    out %al, %dx
    mov $entries, %esi
    call print
    cmpl $0, 12(%ebx)                 # nr_modules: the initrd, if any
    je 3f
    mov $initrd, %esi
    call print
    mov 16(%ebx), %eax                # modlist_paddr
    mov (%eax), %esi                  # module 0 paddr (its content is a NUL-terminated string)
    call print
3:
    mov $0x3f0, %dx
    mov $123, %al
    out %al, %dx
reset:
    mov $0xfe, %al
    out %al, $0x64
1:  hlt
    jmp 1b
bad:
    mov $badmsg, %esi
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
ok:      .asciz "PVH OK cmdline="
nl:      .asciz "\n"
entries: .asciz " memmap entries\n"
initrd:  .asciz "initrd="
badmsg:  .asciz "PVH BAD magic\n"
