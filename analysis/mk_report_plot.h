/* mk_report_plot.h - the report's figures, drawn with cairo; each is written as BASE.png
 * (ARGB image surface) and BASE.svg (SVG surface) by the same drawing code, both
 * MK_PLOT_W x MK_PLOT_H (pixels for PNG, user units = pt for SVG). Several panels (one per
 * run) are laid out side by side and share one color or axis scale. */
#ifndef MK_REPORT_PLOT_H
#define MK_REPORT_PLOT_H

#define MK_PLOT_W 900
#define MK_PLOT_H 600

typedef struct {
    const char *label;
    int n;
    const double *x, *y; /* NaN y values are skipped */
} mk_line;

typedef struct {
    const char *title;
    int nlines;
    const mk_line *lines;
} mk_line_panel;

typedef struct {
    const char *title;
    int rows, cols;            /* domains x experts */
    const double *v;           /* [rows, cols] */
    const char *const *row_labels;
} mk_heat_panel;

typedef struct {
    const char *title;
    int n;
    const double *v;           /* sorted descending by the plot */
} mk_bar_panel;

/* Line plots over steps, one panel per entry, common y range (the data's range). */
int mk_plot_lines(const char *base, const char *title, const char *xlabel, const char *ylabel,
                  int npanels, const mk_line_panel *panels);

/* Heatmaps with one color scale 0..vmax (viridis), ref marked on the color bar. */
int mk_plot_heatmap(const char *base, const char *title, int npanels, const mk_heat_panel *panels,
                    double vmax, double ref);

/* Sorted bars in a grid of nrows x ncols panels, y from 0 to ymax, dashed line at ref. */
int mk_plot_bars(const char *base, const char *title, int nrows, int ncols, const mk_bar_panel *panels,
                 double ymax, double ref);

#endif
