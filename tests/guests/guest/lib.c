/* Freestanding support for the test guests: output over the debug port, strings, arguments. */
#include "guest.h"

int failures;

void puts(const char *s) {
    while (*s) outb(DEBUG_CHAR_PORT, (u8)*s++);
}

void put_hex(u64 v) {
    char buf[19];
    buf[0] = '0';
    buf[1] = 'x';
    for (int i = 0; i < 16; i++) {
        u8 nib = (v >> (60 - 4 * i)) & 0xf;
        buf[2 + i] = nib < 10 ? '0' + nib : 'a' + nib - 10;
    }
    buf[18] = 0;
    puts(buf);
}

void put_dec(u64 v) {
    char buf[21];
    int i = 20;
    buf[i] = 0;
    do {
        buf[--i] = '0' + (v % 10);
        v /= 10;
    } while (v && i > 0);
    puts(&buf[i]);
}

void *memset(void *d, int c, usize n) {
    u8 *p = d;
    while (n--) *p++ = (u8)c;
    return d;
}

void *memcpy(void *d, const void *s, usize n) {
    u8 *p = d;
    const u8 *q = s;
    while (n--) *p++ = *q++;
    return d;
}

int memcmp(const void *a, const void *b, usize n) {
    const u8 *p = a, *q = b;
    for (usize i = 0; i < n; i++)
        if (p[i] != q[i]) return p[i] < q[i] ? -1 : 1;
    return 0;
}

usize strlen(const char *s) {
    usize n = 0;
    while (s[n]) n++;
    return n;
}

int str_starts(const char *s, const char *prefix) {
    while (*prefix)
        if (*s++ != *prefix++) return 0;
    return 1;
}

static const char *find_key(const char *s, const char *key) {
    usize kl = strlen(key);
    while (*s) {
        while (*s == ' ') s++;
        if (str_starts(s, key) && s[kl] == '=') return s + kl + 1;
        while (*s && *s != ' ') s++;
    }
    return 0;
}

u64 arg_u64(const char *cmdline, const char *key, u64 dflt) {
    const char *v = cmdline ? find_key(cmdline, key) : 0;
    if (!v || *v < '0' || *v > '9') return dflt;
    u64 r = 0;
    while (*v >= '0' && *v <= '9') r = r * 10 + (u64)(*v++ - '0');
    return r;
}

int has_word(const char *s, const char *word) {
    usize wl = strlen(word);
    if (!s) return 0;
    while (*s) {
        while (*s == ' ') s++;
        if (str_starts(s, word) && (s[wl] == ' ' || s[wl] == 0)) return 1;
        while (*s && *s != ' ') s++;
    }
    return 0;
}

void check(int cond, const char *name, const char *why) {
    if (cond) {
        puts("ok ");
        puts(name);
        puts("\n");
    } else {
        failures++;
        puts("fail ");
        puts(name);
        puts(" ");
        puts(why);
        puts("\n");
    }
}
