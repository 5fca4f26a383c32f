/* <uv.h> for the supervisor: it pulls in <sys/param.h>, whose MIN/MAX
 * clash with common/util/macro.h's. Include this before macro.h. */
#pragma once

#include <uv.h>
#undef MIN
#undef MAX
#include "common/util/macro.h"
