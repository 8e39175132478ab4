#ifndef ENTITYSYNC_CNGHTTP2_SHIM_H
#define ENTITYSYNC_CNGHTTP2_SHIM_H
#include <nghttp2/nghttp2.h>
#endif
