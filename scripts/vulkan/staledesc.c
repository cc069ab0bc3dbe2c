// Diagnostic interposer: tracks which VkBuffer each descriptor binding was last written with,
// and reports, at vkCmdBindDescriptorSets, bindings whose buffer has since been destroyed.
// STALEDESC_FIX=1: writes that leave bindings of a set unwritten are padded with the first
// buffer of the write (so no binding can keep a destroyed buffer).
#define _GNU_SOURCE
#include <vulkan/vulkan.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>

#define MAXB 16
#define NSETS 65536
#define NBUF 65536
typedef struct { VkDescriptorSet set; uint32_t nbind; VkBuffer buf[MAXB]; uint64_t gen[MAXB]; } setrec;
static setrec sets[NSETS];
typedef struct { VkBuffer b; uint64_t gen; int dead; } bufrec;
static bufrec bufs[NBUF];
typedef struct { VkDescriptorSetLayout l; uint32_t n; } layrec;
static layrec lays[1024]; static int nlays;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int fix = -1;
static unsigned long nstale_binds, nbinds, nwrites_padded;
static uint64_t global_gen = 1;

static PFN_vkGetInstanceProcAddr real_gipa;
static PFN_vkGetDeviceProcAddr real_gdpa;
static PFN_vkUpdateDescriptorSets real_update;
static PFN_vkAllocateDescriptorSets real_alloc;
static PFN_vkDestroyBuffer real_destroy_buffer;
static PFN_vkCreateBuffer real_create_buffer;
static PFN_vkCmdBindDescriptorSets real_bind;
static PFN_vkCreateDescriptorSetLayout real_create_dsl;

static setrec *find_set(VkDescriptorSet s, int create) {
  size_t h = ((uintptr_t)s >> 4) % NSETS;
  for (size_t i = 0; i < NSETS; i++) {
    setrec *r = &sets[(h + i) % NSETS];
    if (r->set == s) return r;
    if (r->set == 0) { if (!create) return NULL; r->set = s; return r; }
  }
  return NULL;
}
static bufrec *find_buf(VkBuffer b, int create) {
  size_t h = ((uintptr_t)b >> 4) % NBUF;
  for (size_t i = 0; i < NBUF; i++) {
    bufrec *r = &bufs[(h + i) % NBUF];
    if (r->b == b) return r;
    if (r->b == 0) { if (!create) return NULL; r->b = b; return r; }
  }
  return NULL;
}

static VkResult VKAPI_CALL my_create_dsl(VkDevice d, const VkDescriptorSetLayoutCreateInfo *ci, const VkAllocationCallbacks *a, VkDescriptorSetLayout *out) {
  VkResult r = real_create_dsl(d, ci, a, out);
  if (r == VK_SUCCESS) { pthread_mutex_lock(&mu); if (nlays < 1024) { lays[nlays].l = *out; lays[nlays].n = ci->bindingCount; nlays++; } pthread_mutex_unlock(&mu); }
  return r;
}
static VkResult VKAPI_CALL my_alloc(VkDevice d, const VkDescriptorSetAllocateInfo *ai, VkDescriptorSet *out) {
  VkResult r = real_alloc(d, ai, out);
  if (r != VK_SUCCESS) return r;
  pthread_mutex_lock(&mu);
  for (uint32_t i = 0; i < ai->descriptorSetCount; i++) {
    setrec *s = find_set(out[i], 1);
    uint32_t n = 0;
    for (int k = 0; k < nlays; k++) if (lays[k].l == ai->pSetLayouts[i]) n = lays[k].n;
    s->nbind = n > MAXB ? MAXB : n;
    memset(s->buf, 0, sizeof s->buf); memset(s->gen, 0, sizeof s->gen);
  }
  pthread_mutex_unlock(&mu);
  return r;
}
static VkResult VKAPI_CALL my_create_buffer(VkDevice d, const VkBufferCreateInfo *ci, const VkAllocationCallbacks *a, VkBuffer *out) {
  VkResult r = real_create_buffer(d, ci, a, out);
  if (r == VK_SUCCESS) { pthread_mutex_lock(&mu); bufrec *b = find_buf(*out, 1); if (b) { b->gen = global_gen++; b->dead = 0; } pthread_mutex_unlock(&mu); }
  return r;
}
static void VKAPI_CALL my_destroy_buffer(VkDevice d, VkBuffer b, const VkAllocationCallbacks *a) {
  pthread_mutex_lock(&mu); bufrec *r = find_buf(b, 0); if (r) r->dead = 1; pthread_mutex_unlock(&mu);
  real_destroy_buffer(d, b, a);
}
static void VKAPI_CALL my_update(VkDevice d, uint32_t nw, const VkWriteDescriptorSet *w, uint32_t nc, const VkCopyDescriptorSet *c) {
  VkWriteDescriptorSet *w2 = NULL; VkDescriptorBufferInfo *infos = NULL;
  pthread_mutex_lock(&mu);
  if (fix) {
    w2 = malloc(sizeof *w2 * (nw ? nw : 1)); infos = malloc(sizeof *infos * MAXB * (nw ? nw : 1));
    memcpy(w2, w, sizeof *w2 * nw);
  }
  for (uint32_t i = 0; i < nw; i++) {
    setrec *s = find_set(w[i].dstSet, 0);
    if (!s || (w[i].descriptorType != VK_DESCRIPTOR_TYPE_STORAGE_BUFFER)) continue;
    uint32_t end = w[i].dstBinding + w[i].descriptorCount;
    for (uint32_t j = 0; j < w[i].descriptorCount && w[i].dstBinding + j < MAXB; j++) {
      bufrec *b = find_buf(w[i].pBufferInfo[j].buffer, 0);
      s->buf[w[i].dstBinding + j] = w[i].pBufferInfo[j].buffer;
      s->gen[w[i].dstBinding + j] = b ? b->gen : 0;
    }
    if (fix && w[i].dstBinding == 0 && end < s->nbind) {
      VkDescriptorBufferInfo *in = infos + MAXB * i;
      for (uint32_t j = 0; j < s->nbind; j++) in[j] = j < end ? w[i].pBufferInfo[j] : w[i].pBufferInfo[0];
      w2[i].descriptorCount = s->nbind; w2[i].pBufferInfo = in;
      for (uint32_t j = end; j < s->nbind; j++) { s->buf[j] = in[j].buffer; s->gen[j] = s->gen[0]; }
      nwrites_padded++;
    }
  }
  pthread_mutex_unlock(&mu);
  real_update(d, nw, fix ? w2 : w, nc, c);
  free(w2); free(infos);
}
static void VKAPI_CALL my_bind(VkCommandBuffer cb, VkPipelineBindPoint bp, VkPipelineLayout l, uint32_t first, uint32_t n, const VkDescriptorSet *ds, uint32_t ndyn, const uint32_t *dyn) {
  pthread_mutex_lock(&mu);
  for (uint32_t i = 0; i < n; i++) {
    setrec *s = find_set(ds[i], 0);
    if (!s) continue;
    nbinds++;
    for (uint32_t j = 0; j < s->nbind; j++) {
      if (!s->buf[j]) continue;
      bufrec *b = find_buf(s->buf[j], 0);
      int stale = !b || b->dead || b->gen != s->gen[j];
      if (stale) {
        nstale_binds++;
        if (nstale_binds <= 20 || (nstale_binds & (nstale_binds - 1)) == 0)
          fprintf(stderr, "STALEDESC bind #%lu: set %p binding %u holds buffer %p (%s) [stale binds so far %lu]\n",
                  nbinds, (void *)s->set, j, (void *)s->buf[j], !b ? "unknown" : b->dead ? "destroyed" : "handle reused by a newer buffer", nstale_binds);
      }
    }
  }
  pthread_mutex_unlock(&mu);
  real_bind(cb, bp, l, first, n, ds, ndyn, dyn);
}

#define HOOK(name, var, fn) if (!strcmp(pName, name)) { var = (void *)r; return r ? (PFN_vkVoidFunction)fn : NULL; }
static PFN_vkVoidFunction hook(const char *pName, PFN_vkVoidFunction r) {
  if (fix < 0) { const char *e = getenv("STALEDESC_FIX"); fix = e && *e == '1'; fprintf(stderr, "STALEDESC loaded, fix=%d\n", fix); }
  HOOK("vkUpdateDescriptorSets", real_update, my_update);
  HOOK("vkAllocateDescriptorSets", real_alloc, my_alloc);
  HOOK("vkDestroyBuffer", real_destroy_buffer, my_destroy_buffer);
  HOOK("vkCreateBuffer", real_create_buffer, my_create_buffer);
  HOOK("vkCmdBindDescriptorSets", real_bind, my_bind);
  HOOK("vkCreateDescriptorSetLayout", real_create_dsl, my_create_dsl);
  return r;
}
PFN_vkVoidFunction VKAPI_CALL vkGetDeviceProcAddr(VkDevice d, const char *pName) {
  if (!real_gdpa) real_gdpa = (PFN_vkGetDeviceProcAddr)dlsym(RTLD_NEXT, "vkGetDeviceProcAddr");
  if (!strcmp(pName, "vkGetDeviceProcAddr")) return (PFN_vkVoidFunction)vkGetDeviceProcAddr;
  return hook(pName, real_gdpa(d, pName));
}
PFN_vkVoidFunction VKAPI_CALL vkGetInstanceProcAddr(VkInstance inst, const char *pName) {
  if (!real_gipa) real_gipa = (PFN_vkGetInstanceProcAddr)dlsym(RTLD_NEXT, "vkGetInstanceProcAddr");
  if (!strcmp(pName, "vkGetInstanceProcAddr")) return (PFN_vkVoidFunction)vkGetInstanceProcAddr;
  if (!strcmp(pName, "vkGetDeviceProcAddr")) { if (!real_gdpa) real_gdpa = (PFN_vkGetDeviceProcAddr)real_gipa(inst, "vkGetDeviceProcAddr"); return (PFN_vkVoidFunction)vkGetDeviceProcAddr; }
  return hook(pName, real_gipa(inst, pName));
}
__attribute__((destructor)) static void report(void) {
  fprintf(stderr, "STALEDESC summary: %lu descriptor-set binds, %lu stale bindings seen, %lu writes padded\n", nbinds, nstale_binds, nwrites_padded);
}
