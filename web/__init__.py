"""voicescreen.web"""
