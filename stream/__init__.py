"""voicescreen.stream"""
