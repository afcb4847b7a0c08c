# Not a guest: the start-up benchmark's launcher (benches/rusage), a host program of one page
# and no libc, wrapped in the same ELF as the 64-bit guests (loaded at 1 MiB). A process's
# ru_maxrss counts the address space it execs away from, its parent's when vforked: this
# parent's is a few pages, so the VMM's figure is its own.
#   launch64 OUT PROGRAM ARGS...
# vforks, execs PROGRAM with ARGS (and the environment), wait4s for it, and writes 184 bytes to
# OUT: CLOCK_MONOTONIC before the vfork (16), after wait4 (16), the wait status (4, then 4 of
# padding) and the child's struct rusage (144). Exit 1 if OUT cannot be opened; the child
# exits 127 if the exec fails.
    .code64
    .globl _start
_start:
    mov (%rsp), %rbx                # argc
    lea 8(%rsp), %r12               # argv
    lea 16(%rsp,%rbx,8), %r13       # envp
    sub $256, %rsp
    and $-16, %rsp
    mov $2, %eax                    # open(OUT, O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0644)
    mov 8(%r12), %rdi
    mov $0x80241, %esi
    mov $0644, %edx
    syscall
    test %rax, %rax
    js fail
    mov %rax, %r14
    mov $228, %eax                  # clock_gettime(CLOCK_MONOTONIC, buf+0)
    mov $1, %edi
    mov %rsp, %rsi
    syscall
    mov $58, %eax                   # vfork
    syscall
    test %rax, %rax
    jnz parent
    mov $59, %eax                   # execve(argv[2], argv + 2, envp): registers only
    mov 16(%r12), %rdi
    lea 16(%r12), %rsi
    mov %r13, %rdx
    syscall
    mov $60, %eax                   # _exit(127)
    mov $127, %edi
    syscall
parent:
    mov %rax, %rdi                  # wait4(pid, buf+32, 0, buf+40)
    mov $61, %eax
    lea 32(%rsp), %rsi
    xor %edx, %edx
    lea 40(%rsp), %r10
    syscall
    mov $228, %eax                  # clock_gettime(CLOCK_MONOTONIC, buf+16)
    mov $1, %edi
    lea 16(%rsp), %rsi
    syscall
    mov $1, %eax                    # write(out, buf, 184)
    mov %r14, %rdi
    mov %rsp, %rsi
    mov $184, %edx
    syscall
    mov $60, %eax                   # _exit(0)
    xor %edi, %edi
    syscall
fail:
    mov $60, %eax                   # _exit(1)
    mov $1, %edi
    syscall
