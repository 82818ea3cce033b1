/* CFI: where a function keeps its caller's return address, read from the
 * unwind tables the compiler emits for every function (.eh_frame, found
 * through .eh_frame_hdr's sorted table: _hak_os_eh_frame_hdr).  wrapper.c
 * steps from a return address to the next one up the stack with it.
 *
 * The rule at an address of a function: the CFA (the stack pointer before
 * the call that entered the function) is rsp or rbp plus an offset, the
 * return address is at CFA - 8, and the caller's rbp is either still in
 * rbp or saved at CFA + an offset.  Only what x86-64 compilers emit for
 * ordinary functions is understood: a CFA defined by an expression (PLT
 * stubs, signal trampolines), a 64-bit FDE, an unknown augmentation or
 * opcode gives no rule.  Reading the tables allocates nothing, takes no
 * lock and makes no system call; a lookup costs ~1 us (a binary search and
 * a few dozen opcodes), once per return address (wrapper.c caches it). */
#include <string.h>

#include "internal.h"

#if HAK_CFI_SUPPORTED

#define REG_RBP 6
#define REG_RSP 7
#define REG_RA 16 /* the return address column */
#define STATE_DEPTH 4 /* DW_CFA_remember_state nesting */

typedef struct {
  const uint8_t* p;
  const uint8_t* end;
} cur_t;

static bool u8(cur_t* c, uint8_t* v) {
  if (c->p >= c->end) return false;
  *v = *c->p++;
  return true;
}

static bool fixed(cur_t* c, void* v, size_t n) {
  if ((size_t)(c->end - c->p) < n) return false;
  memcpy(v, c->p, n);
  c->p += n;
  return true;
}

static bool uleb(cur_t* c, uint64_t* v) {
  uint64_t r = 0;
  for (unsigned shift = 0; shift < 64; shift += 7) {
    uint8_t b;
    if (!u8(c, &b)) return false;
    r |= (uint64_t)(b & 0x7f) << shift;
    if (!(b & 0x80)) {
      *v = r;
      return true;
    }
  }
  return false;
}

static bool sleb(cur_t* c, int64_t* v) {
  uint64_t r = 0;
  unsigned shift = 0;
  uint8_t b;
  do {
    if (shift >= 64 || !u8(c, &b)) return false;
    r |= (uint64_t)(b & 0x7f) << shift;
    shift += 7;
  } while (b & 0x80);
  if (shift < 64 && (b & 0x40)) r |= ~(uint64_t)0 << shift;
  *v = (int64_t)r;
  return true;
}

/* A DW_EH_PE-encoded value: absolute, pc-relative or relative to base
 * (datarel); never indirect (only personality pointers are, and they are
 * skipped, not followed). */
static bool encoded(cur_t* c, uint8_t enc, uintptr_t datarel, uintptr_t* v) {
  if (enc == 0xff) return false; /* DW_EH_PE_omit */
  uintptr_t at = (uintptr_t)c->p, x;
  switch (enc & 0x0f) {
    case 0x00: { uint64_t u; if (!fixed(c, &u, 8)) return false; x = (uintptr_t)u; break; }
    case 0x01: { uint64_t u; if (!uleb(c, &u)) return false; x = (uintptr_t)u; break; }
    case 0x02: { uint16_t u; if (!fixed(c, &u, 2)) return false; x = u; break; }
    case 0x03: { uint32_t u; if (!fixed(c, &u, 4)) return false; x = u; break; }
    case 0x04: { uint64_t u; if (!fixed(c, &u, 8)) return false; x = (uintptr_t)u; break; }
    case 0x09: { int64_t s; if (!sleb(c, &s)) return false; x = (uintptr_t)s; break; }
    case 0x0a: { int16_t s; if (!fixed(c, &s, 2)) return false; x = (uintptr_t)(intptr_t)s; break; }
    case 0x0b: { int32_t s; if (!fixed(c, &s, 4)) return false; x = (uintptr_t)(intptr_t)s; break; }
    case 0x0c: { int64_t s; if (!fixed(c, &s, 8)) return false; x = (uintptr_t)s; break; }
    default: return false;
  }
  switch (enc & 0x70) {
    case 0x00: break;
    case 0x10: x += at; break;      /* pcrel */
    case 0x30: x += datarel; break; /* datarel */
    default: return false;
  }
  *v = x;
  return true;
}

/* The FDE covering pc, from .eh_frame_hdr's binary-search table (what GNU
 * ld, gold and lld emit: datarel sdata4 pairs). */
static const uint8_t* find_fde(const uint8_t* hdr, uintptr_t pc) {
  cur_t c = {hdr, hdr + 64};
  uint8_t version, ptr_enc, count_enc, table_enc;
  uintptr_t eh_frame, count;
  if (!u8(&c, &version) || !u8(&c, &ptr_enc) || !u8(&c, &count_enc) || !u8(&c, &table_enc)) return NULL;
  if (version != 1 || table_enc != 0x3b) return NULL;
  if (!encoded(&c, ptr_enc, (uintptr_t)hdr, &eh_frame) || !encoded(&c, count_enc, (uintptr_t)hdr, &count))
    return NULL;
  if (count == 0 || count > ((size_t)1 << 28)) return NULL;
  const uint8_t* table = c.p;
  size_t lo = 0, hi = count; /* the last entry whose start <= pc */
  while (hi - lo > 1) {
    size_t mid = lo + (hi - lo) / 2;
    int32_t start;
    memcpy(&start, table + mid * 8, 4);
    if ((uintptr_t)hdr + (intptr_t)start <= pc) lo = mid;
    else hi = mid;
  }
  int32_t start, fde;
  memcpy(&start, table + lo * 8, 4);
  memcpy(&fde, table + lo * 8 + 4, 4);
  if ((uintptr_t)hdr + (intptr_t)start > pc) return NULL;
  return hdr + fde;
}

typedef struct {
  hak_cfa_rule_t row;
  hak_cfa_rule_t stack[STATE_DEPTH];
  int depth;
  hak_cfa_rule_t initial; /* after the CIE's instructions: DW_CFA_restore */
  uint64_t code_align;
  int64_t data_align;
  uint8_t fde_enc;
} interp_t;

/* A register's rule changed: rbp's is kept; the return address must stay
 * at CFA - 8 (anything else -- DW_CFA_undefined in a thread's or the
 * program's first frame: no caller -- gives no rule). */
static void reg_rule(interp_t* in, uint64_t reg, int kind, int64_t off) {
  if (reg == REG_RA) {
    in->row.ra_lost = !(kind == HAK_CFA_RBP_SAVED && off == -8);
  } else if (reg == REG_RBP) {
    in->row.rbp = (int8_t)kind;
    in->row.rbp_off = (int32_t)off;
  }
}

static void restore(interp_t* in, uint64_t reg) {
  if (reg == REG_RBP) in->row.rbp = in->initial.rbp, in->row.rbp_off = in->initial.rbp_off;
  if (reg == REG_RA) in->row.ra_lost = in->initial.ra_lost;
}

/* Runs instructions until the location passes pc (*loc: the row's start;
 * NULL for the CIE's, which precede every location).  false: not
 * understood. */
static bool run(interp_t* in, cur_t c, uintptr_t* loc, uintptr_t pc) {
  while (c.p < c.end) {
    uint8_t op;
    uint64_t a, b;
    int64_t s;
    uintptr_t next = loc ? *loc : 0;
    if (!u8(&c, &op)) return false;
    switch (op & 0xc0) {
      case 0x40: next += (uintptr_t)(op & 0x3f) * in->code_align; goto advance;
      case 0x80:
        if (!uleb(&c, &b)) return false;
        reg_rule(in, op & 0x3f, HAK_CFA_RBP_SAVED, (int64_t)b * in->data_align);
        continue;
      case 0xc0:
        restore(in, op & 0x3f);
        continue;
    }
    switch (op) {
      case 0x00: continue; /* nop */
      case 0x01: if (!encoded(&c, in->fde_enc, 0, &next)) return false; goto advance;
      case 0x02: { uint8_t d; if (!u8(&c, &d)) return false; next += d * in->code_align; goto advance; }
      case 0x03: { uint16_t d; if (!fixed(&c, &d, 2)) return false; next += d * in->code_align; goto advance; }
      case 0x04: { uint32_t d; if (!fixed(&c, &d, 4)) return false; next += d * in->code_align; goto advance; }
      case 0x05: /* offset_extended */
        if (!uleb(&c, &a) || !uleb(&c, &b)) return false;
        reg_rule(in, a, HAK_CFA_RBP_SAVED, (int64_t)b * in->data_align);
        continue;
      case 0x06: /* restore_extended */
        if (!uleb(&c, &a)) return false;
        restore(in, a);
        continue;
      case 0x07: /* undefined */
      case 0x08: /* same_value */
        if (!uleb(&c, &a)) return false;
        reg_rule(in, a, op == 0x08 ? HAK_CFA_RBP_SAME : HAK_CFA_RBP_UNKNOWN, 0);
        continue;
      case 0x09: /* register */
        if (!uleb(&c, &a) || !uleb(&c, &b)) return false;
        reg_rule(in, a, HAK_CFA_RBP_UNKNOWN, 0);
        continue;
      case 0x0a: /* remember_state */
        if (in->depth == STATE_DEPTH) return false;
        in->stack[in->depth++] = in->row;
        continue;
      case 0x0b: /* restore_state */
        if (in->depth == 0) return false;
        in->row = in->stack[--in->depth];
        continue;
      case 0x0c: /* def_cfa */
        if (!uleb(&c, &a) || !uleb(&c, &b)) return false;
        in->row.reg = (uint8_t)(a < 256 ? a : 255), in->row.off = (int32_t)b;
        continue;
      case 0x0d: /* def_cfa_register */
        if (!uleb(&c, &a)) return false;
        in->row.reg = (uint8_t)(a < 256 ? a : 255);
        continue;
      case 0x0e: /* def_cfa_offset */
        if (!uleb(&c, &a)) return false;
        in->row.off = (int32_t)a;
        continue;
      case 0x10: /* expression */
      case 0x16: /* val_expression */
        if (!uleb(&c, &a) || !uleb(&c, &b) || b > (uint64_t)(c.end - c.p)) return false;
        c.p += b;
        reg_rule(in, a, HAK_CFA_RBP_UNKNOWN, 0);
        continue;
      case 0x11: /* offset_extended_sf */
        if (!uleb(&c, &a) || !sleb(&c, &s)) return false;
        reg_rule(in, a, HAK_CFA_RBP_SAVED, s * in->data_align);
        continue;
      case 0x12: /* def_cfa_sf */
        if (!uleb(&c, &a) || !sleb(&c, &s)) return false;
        in->row.reg = (uint8_t)(a < 256 ? a : 255), in->row.off = (int32_t)(s * in->data_align);
        continue;
      case 0x13: /* def_cfa_offset_sf */
        if (!sleb(&c, &s)) return false;
        in->row.off = (int32_t)(s * in->data_align);
        continue;
      case 0x14: /* val_offset */
        if (!uleb(&c, &a) || !uleb(&c, &b)) return false;
        reg_rule(in, a, HAK_CFA_RBP_UNKNOWN, 0);
        continue;
      case 0x15: /* val_offset_sf */
        if (!uleb(&c, &a) || !sleb(&c, &s)) return false;
        reg_rule(in, a, HAK_CFA_RBP_UNKNOWN, 0);
        continue;
      case 0x2e: /* GNU_args_size */
        if (!uleb(&c, &a)) return false;
        continue;
      case 0x2f: /* GNU_negative_offset_extended */
        if (!uleb(&c, &a) || !uleb(&c, &b)) return false;
        reg_rule(in, a, HAK_CFA_RBP_SAVED, -(int64_t)b * in->data_align);
        continue;
      default: return false; /* def_cfa_expression (0x0f) and anything else */
    }
  advance:
    if (loc == NULL) return false; /* a CIE does not advance */
    if (next > pc) return true;    /* the row in force at pc is complete */
    *loc = next;
  }
  return true;
}

bool _hak_cfa_rule(uintptr_t pc, hak_cfa_rule_t* out, uintptr_t* func) {
  const uint8_t* hdr = _hak_os_eh_frame_hdr(pc);
  if (hdr == NULL) return false;
  const uint8_t* fde = find_fde(hdr, pc);
  if (fde == NULL) return false;
  uint32_t len, cie_off, id;
  memcpy(&len, fde, 4);
  if (len == 0 || len == 0xffffffffu) return false;
  memcpy(&cie_off, fde + 4, 4);
  if (cie_off == 0) return false; /* a CIE, not an FDE */
  const uint8_t* cie = fde + 4 - cie_off;
  uint32_t cie_len;
  memcpy(&cie_len, cie, 4);
  if (cie_len == 0 || cie_len == 0xffffffffu) return false;
  cur_t c = {cie + 8, cie + 4 + cie_len};
  memcpy(&id, cie + 4, 4);
  uint8_t version;
  if (id != 0 || !u8(&c, &version) || (version != 1 && version != 3)) return false;
  const char* aug = (const char*)c.p;
  size_t aug_len = strnlen(aug, (size_t)(c.end - c.p));
  if (aug_len == (size_t)(c.end - c.p)) return false;
  c.p += aug_len + 1;
  interp_t in = {.row = {.reg = REG_RSP, .off = 8, .rbp = HAK_CFA_RBP_SAME}, .fde_enc = 0};
  uint64_t ra_reg;
  if (!uleb(&c, &in.code_align) || !sleb(&c, &in.data_align)) return false;
  if (version == 1) {
    uint8_t r;
    if (!u8(&c, &r)) return false;
    ra_reg = r;
  } else if (!uleb(&c, &ra_reg)) {
    return false;
  }
  if (ra_reg != 16) return false; /* x86-64: the return address column */
  bool z = aug[0] == 'z';
  if (aug_len > 0 && !z) return false;
  if (z) {
    uint64_t n;
    if (!uleb(&c, &n) || n > (uint64_t)(c.end - c.p)) return false;
    cur_t a = {c.p, c.p + n};
    for (const char* k = aug + 1; *k; k++) {
      if (*k == 'R') {
        if (!u8(&a, &in.fde_enc)) return false;
      } else if (*k == 'P') { /* personality: skipped */
        uint8_t enc;
        uintptr_t skip;
        if (!u8(&a, &enc) || !encoded(&a, enc & 0x7f, 0, &skip)) return false;
      } else if (*k == 'L') {
        uint8_t enc;
        if (!u8(&a, &enc)) return false;
      } else if (*k != 'S' && *k != 'B') {
        return false;
      }
    }
    c.p += n;
  }
  if (!run(&in, c, NULL, pc)) return false;
  in.initial = in.row;
  cur_t f = {fde + 8, fde + 4 + len};
  uintptr_t begin, range;
  if (!encoded(&f, in.fde_enc, 0, &begin) || !encoded(&f, in.fde_enc & 0x0f, 0, &range)) return false;
  if (pc < begin || pc - begin >= range) return false;
  if (z) {
    uint64_t n;
    if (!uleb(&f, &n) || n > (uint64_t)(f.end - f.p)) return false;
    f.p += n;
  }
  uintptr_t loc = begin;
  if (!run(&in, f, &loc, pc)) return false;
#ifdef HAK_FAULT_CFI_RA_UNDEFINED_IGNORED /* fault injection: a frame with no caller gets the default rule */
  in.row.ra_lost = false;
#endif
  if ((in.row.reg != REG_RSP && in.row.reg != REG_RBP) || in.row.off < 8 || in.row.off % 8 != 0 || in.row.ra_lost)
    return false;
  *out = in.row;
  *func = begin;
  return true;
}

#else
bool _hak_cfa_rule(uintptr_t pc, hak_cfa_rule_t* out, uintptr_t* func) {
  (void)pc, (void)out, (void)func;
  return false;
}
#endif
