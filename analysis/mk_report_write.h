/* mk_report_write.h - report.md, the CSV tables and the figures of a set of runs. */
#ifndef MK_REPORT_WRITE_H
#define MK_REPORT_WRITE_H

#include "mk_report.h"

/* Write the CSV tables into dir (docs/report-metrics.md lists their columns). */
int mk_report_write_csv(const char *dir, int nrun, const mk_run_report *runs);

/* Write the figures into dir (mk_report_figures.c). */
int mk_report_write_figures(const char *dir, int nrun, const mk_run_report *runs);

/* Write dir/report.md: summary paragraphs, definitions, tables, figure links. */
int mk_report_write_md(const char *dir, int nrun, const mk_run_report *runs, const char *window_text);

#endif
