/* mk_h5.h - how moekit opens HDF5 files it did not just create.
 *
 * Trust model (docs/reliability.md): a checkpoint or routing log from someone else is
 * trusted input in the sense of the HDF5 library, which is not hardened against hostile
 * files (libhdf5 1.10.8 has known crashes on crafted files). What moekit does rule out is
 * code from elsewhere: a dataset can name a filter that HDF5 would look for as a plugin in
 * HDF5_PLUGIN_PATH (or its default /usr/local/hdf5/lib/plugin) and dlopen. Every open of an
 * existing file goes through mk_h5_fopen, which switches dynamic plugin loading off first
 * (H5PLset_loading_state(0), process-wide and idempotent, so calling it on every open costs
 * nothing and needs no init call). Such a dataset then fails to read, with "filter not
 * available". tests/fuzz/test_h5_plugins checks this with a plugin that would leave a mark.
 * SWMR reads also get a bounded number of metadata read attempts (below).
 */
#ifndef MK_H5_H
#define MK_H5_H

#include <hdf5.h>

/* A SWMR reader retries a metadata read whose checksum fails (the writer may be mid-update),
 * by default 100 times, sleeping 1 ns, 2 ns, 4 ns, ... in between: on a file that is simply
 * corrupt that is 2^100 ns, a hang (found by tests/fuzz/fuzz_routing_log). 24 attempts bound
 * one failing read to about 17 ms of sleep, which still covers a writer that is a few
 * milliseconds into an update. */
#define MK_H5_SWMR_READ_ATTEMPTS 24

static inline hid_t mk_h5_fopen(const char *path, unsigned flags, hid_t fapl)
{
    if (H5PLset_loading_state(0) < 0) return H5I_INVALID_HID; /* never open with plugins on */
    if (!(flags & H5F_ACC_SWMR_READ)) return H5Fopen(path, flags, fapl);
    hid_t own = fapl == H5P_DEFAULT ? H5Pcreate(H5P_FILE_ACCESS) : H5Pcopy(fapl);
    if (own < 0) return H5I_INVALID_HID;
    hid_t f = H5Pset_metadata_read_attempts(own, MK_H5_SWMR_READ_ATTEMPTS) < 0
                  ? H5I_INVALID_HID
                  : H5Fopen(path, flags, own);
    H5Pclose(own);
    return f;
}

/* The rank of space, with its dimensions in dims[0..rank-1], or -1 if it has more than max
 * dimensions or cannot be read. H5Sget_simple_extent_dims writes as many entries as the file
 * says (up to 32): never hand it a buffer sized for the rank moekit expects. */
static inline int mk_h5_dims(hid_t space, hsize_t *dims, int max)
{
    int nd = space < 0 ? -1 : H5Sget_simple_extent_ndims(space);
    if (nd < 0 || nd > max) return -1;
    hsize_t all[H5S_MAX_RANK];
    if (H5Sget_simple_extent_dims(space, all, NULL) != nd) return -1;
    for (int i = 0; i < nd; i++) dims[i] = all[i];
    return nd;
}

#endif
