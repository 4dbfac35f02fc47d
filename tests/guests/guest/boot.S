/*
 * PVH entry for Cairn's test guests.
 *
 * Entered in 32-bit protected mode with paging off and %ebx = hvm_start_info (PVH ABI).
 * It does the minimum in ring 0 (which PVM emulates slowly): load a GDT, switch to long mode
 * with static identity page tables (4 GiB, 2 MiB pages, user-accessible), then `iretq` to ring 3
 * with IOPL=3 and IF=0. Everything else runs in ring 3 (C code in guest.c), which PVM runs natively.
 * A 32-bit iret to ring 3 is avoided on purpose: PVM's emulator fails on it.
 */

#define DEBUG_PROGRESS_PORT 0x80
#define DEBUG_EXIT_PORT 0x501
#define TSS_LIMIT (104 + 8192)

    .section .note.pvh, "a"
    .p2align 2
    .long 4                         /* name size: "Xen\0" */
    .long 4                         /* descriptor size */
    .long 18                        /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .p2align 2
    .long pvh_start

    .section .text.boot, "ax"
    .code32
    .globl pvh_start
pvh_start:
    cli
    movl %ebx, start_info_pa
    movb $0x01, %al
    outb %al, $DEBUG_PROGRESS_PORT
    /* Patch the TSS base into its descriptor (a link-time address cannot be split by ld). */
    movl $tss, %eax
    movw %ax, gdt_tss + 2
    shrl $16, %eax
    movb %al, gdt_tss + 4
    movb %ah, gdt_tss + 7
    lgdt gdt_ptr
    movl $0x10, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    /* CR4.PAE, then CR3, EFER.LME, CR0.PG: the architectural order for entering long mode. */
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl $pml4, %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax
    movl %eax, %cr0
    ljmp $0x08, $long_entry

    .code64
long_entry:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movabsq $kstack_top, %rsp
    /* PVM checks port access against the TSS I/O bitmap even with IOPL=3, so load a TSS whose
     * bitmap allows every port (and whose RSP0 is the kernel stack for interrupts). */
    movw $0x28, %ax
    ltr %ax
    movb $0x02, %al
    outb %al, $DEBUG_PROGRESS_PORT
    /* iretq frame: SS, RSP, RFLAGS (IOPL=3, IF=0, reserved bit 1), CS, RIP. */
    pushq $0x1b
    movabsq $ustack_top, %rax
    pushq %rax
    pushq $0x3002
    pushq $0x23
    movabsq $user_entry, %rax
    pushq %rax
    iretq

user_entry:
    movb $0x03, %al
    outb %al, $DEBUG_PROGRESS_PORT
    movl start_info_pa, %edi
    call guest_main
    movw $DEBUG_EXIT_PORT, %dx
1:  outb %al, %dx
    pause
    jmp 1b

    .section .data
    .p2align 3
gdt:
    .quad 0                         /* 0x00 null */
    .quad 0x00AF9A000000FFFF        /* 0x08 kernel code, 64-bit */
    .quad 0x00CF92000000FFFF        /* 0x10 kernel data, flat */
    .quad 0x00CFF2000000FFFF        /* 0x18 user data, DPL 3 */
    .quad 0x00AFFA000000FFFF        /* 0x20 user code, 64-bit, DPL 3 */
gdt_tss:
    .quad 0x0000890000000000 + TSS_LIMIT /* 0x28 64-bit TSS, base patched at boot */
    .quad 0
gdt_end:
    .p2align 1
gdt_ptr:
    .word gdt_end - gdt - 1
    .long gdt

    .globl start_info_pa
    .p2align 2
start_info_pa:
    .long 0

    /* Identity map of the low 4 GiB with 2 MiB pages; U/S set so ring 3 reaches everything. */
    .p2align 12
pml4:
    .quad pdpt + 0x7
    .fill 511, 8, 0
pdpt:
    .quad pd + 0x7
    .quad pd + 0x1000 + 0x7
    .quad pd + 0x2000 + 0x7
    .quad pd + 0x3000 + 0x7
    .fill 508, 8, 0
pd:
    .set page, 0
    .rept 2048
    .quad (page << 21) | 0x87
    .set page, page + 1
    .endr

    /* 64-bit TSS: RSP0 at offset 4, I/O map base at 0x66, then an all-zero bitmap + 0xff. */
    .p2align 4
tss:
    .long 0
    .quad kstack_top
    .fill 90, 1, 0
    .word 104
    .fill 8192, 1, 0
    .byte 0xff

    .section .bss
    .p2align 12
    .skip 16384
kstack_top:
    .skip 65536
ustack_top:
